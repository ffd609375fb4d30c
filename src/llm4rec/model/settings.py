"""The `model` settings and what can be told about a backbone without loading torch or its
weights: context length, input geometry, attention support, LoRA settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PretrainedConfig

SUPPORTED_ATTENTION = ("eager", "sdpa")
_ALIBI_MODEL_TYPES = ("bloom", "mpt")
SIDES = ("content", "collab")
MUTUAL_REG = ("all", "content_entities")
LORA_KEYS = ("r", "alpha", "dropout", "target_modules")


@dataclass(frozen=True)
class TinySettings:
    """`model.tiny`: the GPT-2 trained from scratch (`backbone: tiny`)."""

    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int
    dropout: float = 0.1  # GPT-2's embedding, attention and residual dropout


@dataclass(frozen=True)
class ModelSettings:
    """The `model` block of the config with a variant's overrides (docs/method.md section 9).

    Optional keys default to what a config without them has always meant.
    """

    backbone: str
    tiny: TinySettings
    tokenizer_vocab_size: int
    attn_implementation: str
    edge_bias: str
    second_order: bool
    freeze_backbone: bool
    lambda_v: float
    max_length: int | None = None
    entity_init_std: float | None = None
    mutual_reg: str = "all"
    dtype: str = "float32"
    lora: Mapping[str, Any] | None = None
    gradient_checkpointing: bool = False
    backbone_layers: int | None = None  # keep the first N decoder blocks (a CPU lever)
    backbone_revision: str | None = None  # read by the `backbone` rule only

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSettings:
        return cls(**{**d, "tiny": TinySettings(**d["tiny"])})


def check_backbone_supported(config: PretrainedConfig, attn_implementation: str) -> None:
    """Refuse what an additive float mask cannot serve exactly (docs/method.md 5.1).

    Flash/flex kernels ignore or reinterpret a float mask; sliding windows and ALiBi add
    their own masking or bias; soft-capping rescales the logits the bias is added to.
    """
    if attn_implementation not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"attn_implementation={attn_implementation!r} is not supported: the edge bias is an additive "
            f"float attention mask, honored exactly only by {SUPPORTED_ATTENTION}"
        )
    name = getattr(config, "model_type", "?")
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"{name}: encoder-decoder models are not supported; use a causal LM")
    layer_types = getattr(config, "layer_types", None) or []
    sliding = getattr(config, "sliding_window", None)
    uses_sliding = sliding is not None and getattr(config, "use_sliding_window", True)
    if uses_sliding or any("sliding" in str(t) for t in layer_types):
        raise ValueError(
            f"{name}: sliding-window attention (sliding_window={sliding}) is not supported: it masks "
            "keys the edge-aware mask expects to reach"
        )
    attn_cfg = getattr(config, "attn_config", None)
    alibi_cfg = attn_cfg.get("alibi") if isinstance(attn_cfg, dict) else getattr(attn_cfg, "alibi", False)
    if (
        name in _ALIBI_MODEL_TYPES
        or getattr(config, "alibi", False)
        or alibi_cfg
        or getattr(config, "position_embedding_type", None) == "alibi"
    ):
        raise ValueError(f"{name}: ALiBi position bias is not supported: it adds its own bias to the attention logits")
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(config, key, None) is not None:
            raise ValueError(f"{name}: logit soft-capping ({key}={getattr(config, key)}) is not supported")


def context_length(config: Any, cap: int | None = None) -> int:
    """The longest sequence a backbone takes: what its positions allow (`n_positions` or
    `max_position_embeddings` of its config, or of `TinySettings`), or `cap`
    (`model.max_length`) when that is shorter. The one place context length is decided."""
    for key in ("n_positions", "max_position_embeddings"):
        positions = getattr(config, key, None)
        if positions:
            return min(int(positions), cap) if cap else int(positions)
    raise ValueError(f"{getattr(config, 'model_type', 'backbone')}: cannot tell the context length")


def backbone_geometry(backbone: str, tiny: TinySettings, tokenizer, max_length: int | None) -> tuple[int, int]:
    """(input-embedding size, usable context) of a backbone, without loading its weights."""
    if backbone == "tiny":
        return len(tokenizer), context_length(tiny, max_length)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(backbone, trust_remote_code=False)
    return int(config.vocab_size), context_length(config, max_length)


def lora_settings(lora: Mapping[str, Any]) -> dict[str, Any]:
    """`model.lora` with its defaults filled in (alpha = 2r, no dropout, peft's target modules
    for the architecture), as stored in `rec_config.json`."""
    unknown = set(lora) - set(LORA_KEYS)
    if unknown:
        raise ValueError(f"model.lora: unknown keys {sorted(unknown)} (known: {', '.join(LORA_KEYS)})")
    if "r" not in lora:
        raise ValueError("model.lora needs r (the adapters' rank)")
    r = int(lora["r"])
    targets = lora.get("target_modules")
    return {
        "r": r,
        "alpha": float(lora.get("alpha", 2 * r)),
        "dropout": float(lora.get("dropout", 0.0)),
        "target_modules": list(targets) if targets else None,
    }
