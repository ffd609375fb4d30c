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
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from .download import sha256_file


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
    extra: dict[str, Any] = field(default_factory=dict)


class Checkpoint:
    """The ``{stage}.ckpt`` folder of one run."""

    def __init__(self, directory: str | Path, fingerprint: str) -> None:
        self.dir = Path(directory)
        self.fingerprint = fingerprint

    def load(self, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer]) -> TrainingState | None:
        """Restore the last state when it matches this run; otherwise clear the folder."""
        meta_path = self.dir / "last" / "state.json"
        if not meta_path.is_file():
            self.clear()
            return None
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") != self.fingerprint:
            self.clear()
            return None
        _load_weights(model, self.dir / "last" / "model.safetensors")
        for name, opt in optimizers.items():
            opt.load_state_dict(torch.load(self.dir / "last" / f"optimizer-{name}.pt", weights_only=True))
        rng = torch.load(self.dir / "last" / "rng.pt", weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        return TrainingState(**meta["state"])

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

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
