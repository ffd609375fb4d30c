"""Backbone loading and the edge-aware recommendation model (docs/method.md section 5).

One shared causal-LM backbone; a content and a collaborative side, each with its own user
and item tables. Entity tokens are embedded from the side's tables, text tokens from the
backbone's own embeddings; the sequence enters the backbone as `inputs_embeds` with the
additive `[B, 1, L, L]` (or, for `learned`, `[B, H, L, L]`) mask built by the collator.

Large backbones: `dtype` (float32, bfloat16, float16) sets the backbone's weights and the
tables alike; under autocast (accelerate's mixed precision) the mask takes the autocast dtype.
`lora` trains low-rank adapters (peft) instead of the backbone, and such a model saves only
the adapters, tables and the base model's name and revision.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_model, save_file, save_model
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, PretrainedConfig, PreTrainedModel

from .graph import EXACT_HOPS, RelationIndex, relation_lut
from .tokenization import EntityVocab

# The additive mask the model takes (from the collator) is float32, blocked entries at this.
MASK_MIN = torch.finfo(torch.float32).min
SUPPORTED_ATTENTION = ("eager", "sdpa")
_ALIBI_MODEL_TYPES = ("bloom", "mpt")
SIDES = ("content", "collab")
MUTUAL_REG = ("all", "content_entities")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
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
    the tables, heads and mask follow the backbone, so its dtype must be a choice.
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


def context_length(backbone: PreTrainedModel) -> int:
    """The longest sequence the backbone's positions allow."""
    cfg = backbone.config
    for key in ("n_positions", "max_position_embeddings"):
        v = getattr(cfg, key, None)
        if v:
            return int(v)
    raise ValueError(f"{cfg.model_type}: cannot tell the context length")


def backbone_geometry(backbone: str, tiny: TinySettings, tokenizer, max_length: int | None) -> tuple[int, int]:
    """(input-embedding size, usable context) of a backbone, without loading its weights."""
    if backbone == "tiny":
        vocab, context = len(tokenizer), int(tiny.n_positions)
    else:
        cfg = AutoConfig.from_pretrained(backbone, trust_remote_code=False)
        vocab = int(cfg.vocab_size)
        context = int(getattr(cfg, "n_positions", None) or cfg.max_position_embeddings)
    return vocab, min(context, max_length) if max_length else context


def enable_gradient_checkpointing(backbone: PreTrainedModel) -> None:
    """Recompute each layer's activations in the backward pass (non-reentrant: works with
    frozen or LoRA backbones fed `inputs_embeds`). transformers 5 renamed the method."""
    kwargs = {"use_reentrant": False}
    enable = getattr(backbone, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


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


class EdgeAwareRecModel(nn.Module):
    """Shared backbone + content and collaborative user/item tables + heads and losses.

    Steps return `(loss, reg)`: `loss` is the step's mean loss, `reg` the mutual
    regularization sum (times lambda_V); the optimizer minimizes `loss + reg`. Losses and
    the regularizer are computed in float32 whatever the backbone's dtype.
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        n_users: int,
        n_items: int,
        lambda_v: float = 1.0,
        freeze_backbone: bool = False,
        edge_bias: str = "seed",
        d6: int = 6,
        max_hops: int = 5,
        init_std: float | None = None,
        mutual_reg: str = "all",
        lora: Mapping[str, Any] | None = None,
        gradient_checkpointing: bool = False,
        base_name: str | None = None,
        base_revision: str | None = None,
        backbone_layers: int | None = None,
    ) -> None:
        super().__init__()
        if mutual_reg not in MUTUAL_REG:
            raise ValueError(f"mutual_reg={mutual_reg!r}: expected one of {MUTUAL_REG}")
        if lora and freeze_backbone:
            raise ValueError("model.lora trains adapters inside the backbone: it needs freeze_backbone: false")
        self.mutual_reg = mutual_reg
        # What a LoRA model's checkpoint names instead of holding the base weights.
        self.base_name = base_name or str(getattr(backbone.config, "name_or_path", "") or "")
        self.base_revision = base_revision or getattr(backbone.config, "_commit_hash", None)
        # Before any wrapping; a LoRA model reloads its base by name and cuts it again.
        self.backbone_layers = int(backbone_layers) if backbone_layers else None
        if self.backbone_layers:
            keep_layers(backbone, self.backbone_layers)
        if gradient_checkpointing:
            enable_gradient_checkpointing(backbone)
        self.lora = lora_settings(lora) if lora else None
        self.backbone = wrap_lora(backbone, self.lora) if self.lora else backbone
        self.n_users, self.n_items = int(n_users), int(n_items)
        self.lambda_v = float(lambda_v)
        self.edge_bias = edge_bias
        self.freeze_backbone = bool(freeze_backbone)
        wte = backbone.get_input_embeddings().weight
        self.vocab, d = int(wte.shape[0]), int(wte.shape[1])
        self.weight_dtype = wte.dtype
        std = float(init_std if init_std is not None else getattr(backbone.config, "initializer_range", 0.02))
        self.tables = nn.ModuleDict()
        for side in SIDES:
            for ent, n in (("user", self.n_users), ("item", self.n_items)):
                emb = nn.Embedding(n, d)
                nn.init.normal_(emb.weight, std=std)
                # The item tables are the collaborative and recommendation heads: same dtype as h.
                self.tables[f"{side}_{ent}"] = emb.to(self.weight_dtype)
        # Which nodes (users, then items) occur in a content example: with mutual_reg
        # "content_entities" only they are regularized (see `set_content_nodes`).
        self.register_buffer("has_content", torch.ones(self.n_users + self.n_items, dtype=torch.bool))
        if freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        self.d6, self.max_hops = int(d6), int(max_hops)
        if edge_bias == "learned":
            # One learnable scalar per head and hop class 0..max_hops+1 (float32 whatever the
            # backbone's dtype), starting at the seed values. The collator's classes are exact
            # up to 5 hops; classes past max_hops + 1 share its scalar plus their fixed seed
            # offset, so that every pair starts at its seed value for any max_hops.
            h = int(backbone.config.num_attention_heads)
            lut = relation_lut(self.max_hops, self.d6)
            self.hop_bias = nn.Parameter(torch.from_numpy(lut).repeat(h, 1))
            exact = relation_lut(max(self.max_hops, EXACT_HOPS), self.d6)
            learn = np.minimum(np.arange(len(exact)), self.max_hops + 1)
            self.register_buffer("hop_class", torch.from_numpy(learn), persistent=False)
            self.register_buffer("hop_offset", torch.from_numpy(exact - lut[learn]), persistent=False)

    # --- embeddings -------------------------------------------------------------------
    @property
    def lm(self) -> PreTrainedModel:
        """The Hugging Face causal LM (the model inside the PEFT wrapper when LoRA is on)."""
        return self.backbone.get_base_model() if self.lora else self.backbone

    @property
    def entity_vocab(self) -> EntityVocab:
        return EntityVocab(self.vocab, self.n_users, self.n_items)

    def entity_embedding(self, nodes: torch.Tensor, side: str) -> torch.Tensor:
        """Embedding of graph nodes (users 0..U-1, items U..) from one side's tables."""
        users = self.tables[f"{side}_user"]
        items = self.tables[f"{side}_item"]
        is_user = (nodes < self.n_users)[..., None]
        u = users(nodes.clamp(0, self.n_users - 1))
        i = items((nodes - self.n_users).clamp(0, self.n_items - 1))
        return torch.where(is_user, u, i)

    def side_parameters(self, side: str) -> list[nn.Parameter]:
        """One optimizer's parameters: the side's tables and the trainable part of the shared
        backbone (all of it, the LoRA adapters only, or nothing when frozen)."""
        params = [self.tables[f"{side}_user"].weight, self.tables[f"{side}_item"].weight]
        params += [p for p in self.backbone.parameters() if p.requires_grad]
        if self.edge_bias == "learned":
            params.append(self.hop_bias)
        return params

    # --- forward ----------------------------------------------------------------------
    def _mask(self, batch: dict[str, torch.Tensor], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The additive mask in the attention's compute dtype, blocked entries at its finfo.min
        (float32's minimum would round to -inf in bfloat16 and float16)."""
        if self.edge_bias == "learned":
            cls = batch["hop_classes"].to(device)
            ent = cls >= 0
            c = cls.clamp(0, len(self.hop_class) - 1).long()  # classes past 6 hops all read "farther"
            bias = self.hop_bias[:, self.hop_class[c]].permute(1, 0, 2, 3) + self.hop_offset[c][:, None]
            bias = torch.where(ent[:, None], bias, 0.0)
            L = cls.shape[-1]
            causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
            key_ok = torch.arange(L, device=device)[None, :] < batch["lengths"].to(device)[:, None]
            allowed = (causal[None] & key_ok[:, None, :])[:, None]
            return torch.where(allowed, bias.to(dtype), torch.finfo(dtype).min)
        mask = batch["attention_mask"].to(device)
        if mask.dtype != dtype:
            blocked = mask <= MASK_MIN
            mask = mask.to(dtype).masked_fill(blocked, torch.finfo(dtype).min)
        return mask

    def hidden_states(self, batch: dict[str, torch.Tensor], side: str) -> torch.Tensor:
        """Last hidden states `[B, L, d]` with entity tokens embedded from `side`'s tables."""
        lm = self.lm
        wte = lm.get_input_embeddings()
        device = wte.weight.device
        ids = batch["input_ids"].to(device)
        nodes = batch["node_ids"].to(device)
        text = wte(ids.clamp(max=self.vocab - 1))
        ent = self.entity_embedding(nodes.clamp(min=0), side).to(text.dtype)
        embeds = torch.where((nodes >= 0)[..., None], ent, text)
        L = ids.shape[1]
        base = getattr(lm, lm.base_model_prefix)
        out = base(
            inputs_embeds=embeds,
            attention_mask=self._mask(batch, compute_dtype(device, text.dtype), device),
            position_ids=torch.arange(L, device=device)[None].expand(ids.shape[0], L),
            use_cache=False,
        )
        return out.last_hidden_state

    def _targets(self, h: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states that predict each target, and the targets (one position shift)."""
        lab = labels[:, 1:].to(h.device)
        sel = lab != -100
        return h[:, :-1][sel], lab[sel]

    def set_content_nodes(self, nodes: torch.Tensor) -> None:
        """Record the graph nodes that have content (occur in some content example)."""
        mask = torch.zeros_like(self.has_content)
        mask[nodes.to(mask.device).long()] = True
        self.has_content.copy_(mask)

    def regularization(self, batch: dict[str, torch.Tensor], this: str, other: str) -> torch.Tensor:
        """lambda_V * sum ||E_this(t) - sg(E_other(t))||^2 over the batch's reg_nodes (float32).

        With mutual_reg "content_entities", nodes without any content example are left out:
        their content embedding never learns from data, so pulling towards it (or it
        towards the collaborative one) only ties a free vector to random initial values.
        """
        nodes = batch["reg_nodes"].to(self.tables[f"{this}_user"].weight.device)
        if self.mutual_reg == "content_entities":
            nodes = nodes[self.has_content[nodes]]
        diff = self.entity_embedding(nodes, this).float() - self.entity_embedding(nodes, other).detach().float()
        return self.lambda_v * diff.pow(2).sum()

    # --- steps ------------------------------------------------------------------------
    def content_step(self, batch: dict[str, torch.Tensor], regularize: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean token cross-entropy of the main texts (LM head), and, when `regularize`, the
        content tables pulled towards the collaborative ones."""
        h = self.hidden_states(batch, "content")
        hs, y = self._targets(h, batch["labels"])
        logits = self.lm.get_output_embeddings()(hs)
        loss = F.cross_entropy(logits.float(), y)
        reg = self.regularization(batch, "content", "collab") if regularize else loss.new_zeros(())
        return loss, reg

    def collab_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy over items at the main items (head tied to the collaborative
        item table), and the collaborative tables pulled towards the content ones."""
        h = self.hidden_states(batch, "collab")
        hs, y = self._targets(h, batch["labels"])
        logits = hs @ self.tables["collab_item"].weight.T
        loss = F.cross_entropy(logits.float(), y)
        return loss, self.regularization(batch, "collab", "content")

    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Item logits `[B, n_items]` from the last prompt token (collaborative tables)."""
        h = self.hidden_states(batch, "collab")
        last = (batch["lengths"] - 1).to(h.device)
        h_last = h[torch.arange(h.shape[0], device=h.device), last]
        return h_last @ self.tables["collab_item"].weight.T

    def finetune_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Multinomial loss -mean_b sum_i y_bi log softmax(scores)_bi, and the recommendation
        (collaborative) tables pulled towards the frozen content tables."""
        logits = self.score(batch).float()
        y = batch["targets"].to(logits.device)
        loss = -(y * F.log_softmax(logits, dim=-1)).sum(-1).mean()
        return loss, self.regularization(batch, "collab", "content")

    # --- persistence ------------------------------------------------------------------
    def _is_base_weight(self, key: str) -> bool:
        """A weight of the base model that a LoRA model does not save (it reloads it by name)."""
        return bool(self.lora) and key.startswith("backbone.") and "lora_" not in key

    def save_weights(self, path: str | Path) -> None:
        """One safetensors file: every weight, or with LoRA all but the base model's."""
        if not self.lora:
            save_model(self, str(path))
            return
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items() if not self._is_base_weight(k)}
        save_file(state, str(path), metadata={"base_name": self.base_name, "base_revision": self.base_revision or ""})

    def save(self, out_dir: str | Path) -> None:
        """`model.safetensors` (all weights; with LoRA: adapters, tables and bias only) +
        `rec_config.json` + `backbone/config.json`."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.save_weights(out / "model.safetensors")
        self.lm.config.save_pretrained(str(out / "backbone"))
        meta = {
            "n_users": self.n_users,
            "n_items": self.n_items,
            "lambda_v": self.lambda_v,
            "edge_bias": self.edge_bias,
            "freeze_backbone": self.freeze_backbone,
            "d6": self.d6,
            "max_hops": self.max_hops,
            "mutual_reg": self.mutual_reg,
            "dtype": dtype_name(self.weight_dtype),
            "lora": self.lora,
            "base_name": self.base_name,
            "base_revision": self.base_revision,
            "backbone_layers": self.backbone_layers,
        }
        (out / "rec_config.json").write_text(json.dumps(meta, indent=2))

    def load_weights(self, path: str | Path) -> None:
        """Load a `model.safetensors` written by `save` into this (same-shaped) model.

        Files from before the learned bias had one scalar per head and hop distance hold an
        extra `edge_weight[h]` on top of `hop_bias[h, 1]`: it is folded into `hop_bias[h, 1]`,
        which gives the same mask.
        """
        p = Path(path)
        f = p / "model.safetensors" if p.is_dir() else p
        missing, unexpected = load_model(self, str(f), strict=False)
        # Models saved before `has_content` existed regularized every entity: keep that.
        missing = [k for k in missing if k != "has_content" and not self._is_base_weight(k)]
        legacy = self.edge_bias == "learned" and "edge_weight" in unexpected
        unexpected = [k for k in unexpected if not (legacy and k == "edge_weight")]
        if missing or unexpected:
            raise ValueError(f"{f}: weights do not fit this model (missing {missing[:5]}, unexpected {unexpected[:5]})")
        if legacy:
            with safe_open(str(f), framework="pt") as fh:
                edge_weight = fh.get_tensor("edge_weight")
            with torch.no_grad():
                self.hop_bias[:, 1] += edge_weight.to(self.hop_bias)

    @classmethod
    def load(cls, run_dir: str | Path, attn_implementation: str = "sdpa", **overrides: Any) -> EdgeAwareRecModel:
        """Rebuild from a folder written by `save`: the backbone from its saved config (no
        access to the original weights), or, for LoRA, the base model by name and revision."""
        d = Path(run_dir)
        meta = json.loads((d / "rec_config.json").read_text())
        meta.update(overrides)
        dtype = torch_dtype(meta.pop("dtype", "float32"))
        if meta.get("lora"):
            name = meta.get("base_name")
            if not name:
                raise ValueError(f"{d / 'rec_config.json'}: a LoRA model needs its base model's name (base_name)")
            backbone = load_backbone(name, attn_implementation, dtype=dtype, revision=meta.get("base_revision"))
        else:
            config = AutoConfig.from_pretrained(str(d / "backbone"), trust_remote_code=False)
            check_backbone_supported(config, attn_implementation)
            backbone = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=dtype)
        model = cls(backbone, **meta)
        model.load_weights(d)
        return model


def build_model(
    settings: ModelSettings, tokenizer, n_users: int, n_items: int, index: RelationIndex | None, seed: int
) -> EdgeAwareRecModel:
    """Backbone (tiny from scratch, or any causal LM by name/path, in `model.dtype`, LoRA-wrapped
    with `model.lora`) plus the entity tables."""
    torch.manual_seed(seed)
    m = settings
    if m.backbone == "tiny":
        if m.lora:
            raise ValueError("model.lora needs a pre-trained backbone (a name or folder), not tiny")
        if m.backbone_layers:
            raise ValueError("model.backbone_layers cuts a pre-trained backbone; tiny's depth is model.tiny.n_layer")
        t = m.tiny
        backbone = build_tiny_backbone(
            len(tokenizer),
            n_layer=t.n_layer,
            n_embd=t.n_embd,
            n_head=t.n_head,
            n_positions=t.n_positions,
            attn_implementation=m.attn_implementation,
            dropout=t.dropout,
            dtype=m.dtype,
        )
    else:
        backbone = load_backbone(m.backbone, attn_implementation=m.attn_implementation, dtype=m.dtype)
    return EdgeAwareRecModel(
        backbone,
        n_users,
        n_items,
        lambda_v=m.lambda_v,
        freeze_backbone=m.freeze_backbone,
        edge_bias=m.edge_bias,
        d6=index.d6 if index is not None else 6,
        max_hops=index.max_hops if index is not None else 5,
        init_std=m.entity_init_std,
        mutual_reg=m.mutual_reg,
        lora=m.lora,
        gradient_checkpointing=m.gradient_checkpointing,
        backbone_layers=m.backbone_layers,
    )


def max_length(model: EdgeAwareRecModel, settings: ModelSettings) -> int:
    """Longest sequence: the backbone's context, or less when the config caps it."""
    cap = settings.max_length
    return min(context_length(model.lm), cap) if cap else context_length(model.lm)
