"""Backbones: tiny GPT-2 from scratch or a pre-trained causal LM, in a chosen dtype, cut to
its first blocks, with gradient checkpointing or LoRA adapters (docs/method.md 5.1)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, PreTrainedModel

from llm4rec.model.settings import check_backbone_supported

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    """`model.dtype` ("float32", "bfloat16", "float16") as a torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r}: expected one of {tuple(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return next(k for k, v in DTYPES.items() if v == dtype)


def compute_dtype(device: torch.device, weights: torch.dtype) -> torch.dtype:
    """The dtype attention runs in: autocast's when it is on (mixed precision), else the weights'."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return weights


def build_tiny_backbone(
    vocab_size: int,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 2,
    n_positions: int = 256,
    attn_implementation: str = "sdpa",
    dropout: float = 0.1,
    dtype: torch.dtype | str = torch.float32,
) -> PreTrainedModel:
    """A small GPT-2 with random weights, trained from scratch (`backbone: tiny`); `dropout`
    is GPT-2's embedding, attention and residual dropout (0.1 as GPT-2). Initialized in
    float32 and then cast, so that every `dtype` starts from the same (rounded) weights."""
    cfg = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        resid_pdrop=dropout,
        bos_token_id=0,
        eos_token_id=0,
        # GPT-2's tanh GELU, as one fused kernel (the default "gelu_new" is composed of ops).
        activation_function="gelu_pytorch_tanh",
    )
    check_backbone_supported(cfg, attn_implementation)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation, dtype=torch.float32)
    _check_loaded(model, attn_implementation)
    dtype = torch_dtype(dtype)
    return model if dtype == torch.float32 else model.to(dtype)


def load_backbone(
    name_or_path: str | Path,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype | str | None = torch.float32,
    revision: str | None = None,
) -> PreTrainedModel:
    """Any Hugging Face causal LM by hub name or local folder (no remote code); refuses
    unsupported attention before loading weights.

    `dtype` defaults to float32 rather than the checkpoint's own ("auto" in transformers 5):
    the computation and the mask follow the backbone, so its dtype must be a choice.
    """
    rev = {"revision": revision} if revision else {}
    config = AutoConfig.from_pretrained(str(name_or_path), trust_remote_code=False, **rev)
    check_backbone_supported(config, attn_implementation)
    kwargs: dict[str, Any] = {"attn_implementation": attn_implementation, "trust_remote_code": False, **rev}
    if dtype is not None:
        kwargs["dtype"] = torch_dtype(dtype)
    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), **kwargs)
    _check_loaded(model, attn_implementation)
    return model


def _check_loaded(model: PreTrainedModel, attn_implementation: str) -> None:
    got = getattr(model.config, "_attn_implementation", None)
    if got != attn_implementation:
        raise ValueError(f"asked for attention {attn_implementation!r}, the model uses {got!r}")


def decoder_blocks(backbone: PreTrainedModel) -> tuple[nn.Module, str]:
    """The base model and the name of its list of decoder blocks (`layers`, GPT-2's `h`)."""
    base = getattr(backbone, backbone.base_model_prefix)
    for attr in ("layers", "h"):
        if isinstance(getattr(base, attr, None), nn.ModuleList):
            return base, attr
    raise ValueError(f"{backbone.config.model_type}: cannot find the decoder blocks (no `layers` or `h` list)")


def keep_layers(backbone: PreTrainedModel, n: int) -> PreTrainedModel:
    """Keep the first `n` decoder blocks (`model.backbone_layers`), then the final norm and
    heads as before: a shallower model that costs about n / L of the full one per token."""
    base, attr = decoder_blocks(backbone)
    blocks = getattr(base, attr)
    if not 1 <= n <= len(blocks):
        raise ValueError(f"model.backbone_layers {n}: the backbone has {len(blocks)} decoder blocks (keep 1 to all)")
    if n == len(blocks):
        return backbone
    setattr(base, attr, blocks[:n])
    cfg = backbone.config
    for key in ("num_hidden_layers", "n_layer"):
        if hasattr(cfg, key):
            setattr(cfg, key, n)  # LLaMA-style models loop over layers[: num_hidden_layers]
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = list(cfg.layer_types)[:n]
    return backbone


def enable_gradient_checkpointing(backbone: PreTrainedModel) -> None:
    """Recompute each layer's activations in the backward pass (non-reentrant: works with
    frozen or LoRA backbones fed `inputs_embeds`). transformers 5 renamed the method."""
    kwargs = {"use_reentrant": False}
    enable = getattr(backbone, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def wrap_lora(backbone: PreTrainedModel, lora: Mapping[str, Any]) -> nn.Module:
    """The backbone inside a PEFT LoRA wrapper: only the adapters require gradients."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"],
        bias="none",
    )
    return get_peft_model(backbone, cfg)
