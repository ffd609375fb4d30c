"""Resumable training state beside a stage's outputs (docs/method.md 1.4).

Snakemake deletes a failed job's outputs, so the state lives in ``{run}/{stage}.ckpt/``:
``last/`` (weights, optimizers, torch RNG, epoch, best score, patience, history) and
``best/`` (the best weights so far). A run resumes only when the stored fingerprint equals
the current one (settings, library version, input checksums); otherwise it starts over.
Everything is safetensors/JSON or tensors loaded with ``weights_only=True``. A model with
``save_weights``/``load_weights`` (``EdgeAwareRecModel``) writes its own weights file, so that
a LoRA model's checkpoint holds only what trains (adapters, tables) and not the base model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle  # for its exception class only: nothing here unpickles
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_model

from llm4rec.core.hashing import sha256_file

log = logging.getLogger("llm4rec.train.checkpoint")

# What reading a damaged checkpoint file raises (safetensors, torch's zip reader, the
# weights-only unpickler, a state.json of the wrong shape).
_DAMAGED = (SafetensorError, OSError, ValueError, RuntimeError, EOFError, KeyError, TypeError, pickle.UnpicklingError)


class CheckpointError(RuntimeError):
    """A checkpoint that read back but could not be restored; it was removed."""


def fingerprint(settings: dict, version: str, inputs: list[str | Path]) -> str:
    """sha256 over the settings (canonical JSON), the library version and every input file."""
    h = hashlib.sha256()
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(version.encode())
    for p in sorted(Path(x) for x in inputs):
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            h.update(str(f.relative_to(p.parent)).encode())
            h.update(sha256_file(f).encode())
    return h.hexdigest()


def _save_weights(model: torch.nn.Module, path: Path) -> None:
    saver = getattr(model, "save_weights", None)
    if callable(saver):
        saver(path)
    else:
        save_model(model, str(path))


def _load_weights(model: torch.nn.Module, path: Path) -> None:
    loader = getattr(model, "load_weights", None)
    if callable(loader):
        loader(path)
    else:
        load_model(model, str(path))


@dataclass
class TrainingState:
    """What a stage needs to continue after a crash."""

    epoch: int = -1  # last completed epoch
    best_score: float = float("-inf")
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)


class Checkpoint:
    """The ``{stage}.ckpt`` folder of one run."""

    def __init__(self, directory: str | Path, fingerprint: str) -> None:
        self.dir = Path(directory)
        self.fingerprint = fingerprint

    def load(self, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer]) -> TrainingState | None:
        """Restore the last state when it matches this run; otherwise clear the folder.

        Every file is read and checked before anything is restored, so that a damaged one
        (a full disk, a machine that died mid-write outside the atomic rename) is named in a
        warning and the stage starts over from a fresh model, instead of failing on the same
        file at every rerun. Should restoring still fail, the folder is removed before the
        error is raised, so the next run starts over.
        """
        last = self.dir / "last"
        meta_path = last / "state.json"
        if not meta_path.is_file():
            self.clear()
            return None
        try:
            meta = json.loads(meta_path.read_text())
            stored = meta.get("fingerprint")
        except (OSError, ValueError, AttributeError) as exc:
            return self._unreadable(meta_path, exc)
        if stored != self.fingerprint:
            self.clear()
            return None
        current = meta_path
        try:
            state = TrainingState(**meta["state"])
            current = last / "model.safetensors"
            load_file(current)
            opt_states = {}
            for name in optimizers:
                current = last / f"optimizer-{name}.pt"
                opt_states[name] = torch.load(current, weights_only=True)
            current = last / "rng.pt"
            rng = torch.load(current, weights_only=True)
            if not isinstance(rng, dict) or "cpu" not in rng:
                raise ValueError("no CPU random state in it")
            if state.best_epoch >= 0:
                current = self.best_weights()
                load_file(current)
        except _DAMAGED as exc:
            return self._unreadable(current, exc)
        try:
            current = last / "model.safetensors"
            _load_weights(model, current)
            for name, opt in optimizers.items():
                current = last / f"optimizer-{name}.pt"
                opt.load_state_dict(opt_states[name])
            current = last / "rng.pt"
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
        except _DAMAGED as exc:
            self.clear()
            raise CheckpointError(
                f"{current}: cannot restore this checkpoint ({type(exc).__name__}: {exc}); it was removed, "
                "the next run starts the stage over"
            ) from exc
        return state

    def _unreadable(self, path: Path, exc: BaseException) -> None:
        """Warn, naming the file, and clear the folder: the stage starts over."""
        log.warning(
            "%s is damaged (%s: %s); removing %s and starting the stage over",
            path,
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
            self.dir,
        )
        self.clear()
        return None

    def save(
        self, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer], state: TrainingState, improved: bool
    ) -> None:
        """Write ``last/`` atomically (a temporary folder, then rename); ``best/`` when improved."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / "last.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        _save_weights(model, tmp / "model.safetensors")
        for name, opt in optimizers.items():
            torch.save(opt.state_dict(), tmp / f"optimizer-{name}.pt")
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        (tmp / "state.json").write_text(
            json.dumps({"fingerprint": self.fingerprint, "state": state.__dict__}, default=float)
        )
        if improved:
            best_tmp = self.dir / "best.tmp"
            shutil.rmtree(best_tmp, ignore_errors=True)
            best_tmp.mkdir()
            shutil.copy2(tmp / "model.safetensors", best_tmp / "model.safetensors")
            shutil.rmtree(self.dir / "best", ignore_errors=True)
            best_tmp.rename(self.dir / "best")
        old = self.dir / "last.old"
        shutil.rmtree(old, ignore_errors=True)
        if (self.dir / "last").exists():
            (self.dir / "last").rename(old)
        tmp.rename(self.dir / "last")
        shutil.rmtree(old, ignore_errors=True)

    def best_weights(self) -> Path:
        return self.dir / "best" / "model.safetensors"

    def load_best(self, model: torch.nn.Module) -> None:
        """Load ``best/`` into ``model``; a damaged file is named and the folder removed, so
        that the rerun starts the stage over rather than failing on it again."""
        try:
            _load_weights(model, self.best_weights())
        except _DAMAGED as exc:
            self.clear()
            raise CheckpointError(
                f"{self.best_weights()}: the best weights are damaged ({type(exc).__name__}: {exc}); the "
                "checkpoint was removed, the next run starts the stage over"
            ) from exc

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
