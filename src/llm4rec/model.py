"""Backbone loading and the edge-aware recommendation model (SPEC section 5).

One shared causal-LM backbone; a content and a collaborative side, each with its own user
and item tables. Entity tokens are embedded from the side's tables, text tokens from the
backbone's own embeddings; the sequence enters the backbone as `inputs_embeds` with the
additive `[B, 1, L, L]` (or, for `learned`, `[B, H, L, L]`) mask built by the collator.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, PretrainedConfig, PreTrainedModel

from .collate import MASK_MIN, relation_lut
from .tokenization import EntityVocab

SUPPORTED_ATTENTION = ("eager", "sdpa")
_ALIBI_MODEL_TYPES = ("bloom", "mpt")
SIDES = ("content", "collab")
MUTUAL_REG = ("all", "content_entities")


def check_backbone_supported(config: PretrainedConfig, attn_implementation: str) -> None:
    """Refuse what an additive float mask cannot serve exactly (SPEC section 5).

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
) -> PreTrainedModel:
    """A small GPT-2 with random weights, trained from scratch (`backbone: tiny`); `dropout`
    is GPT-2's embedding, attention and residual dropout (0.1 as GPT-2)."""
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
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation)
    _check_loaded(model, attn_implementation)
    return model


def load_backbone(
    name_or_path: str | Path,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype | None = None,
) -> PreTrainedModel:
    """Any Hugging Face causal LM by hub name or local folder (no remote code); refuses
    unsupported attention before loading weights."""
    config = AutoConfig.from_pretrained(str(name_or_path), trust_remote_code=False)
    check_backbone_supported(config, attn_implementation)
    kwargs: dict[str, Any] = {"attn_implementation": attn_implementation, "trust_remote_code": False}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), **kwargs)
    _check_loaded(model, attn_implementation)
    return model


def _check_loaded(model: PreTrainedModel, attn_implementation: str) -> None:
    got = getattr(model.config, "_attn_implementation", None)
    if got != attn_implementation:
        raise ValueError(f"asked for attention {attn_implementation!r}, the model uses {got!r}")


def context_length(backbone: PreTrainedModel) -> int:
    """The longest sequence the backbone's positions allow."""
    cfg = backbone.config
    for key in ("n_positions", "max_position_embeddings"):
        v = getattr(cfg, key, None)
        if v:
            return int(v)
    raise ValueError(f"{cfg.model_type}: cannot tell the context length")


class EdgeAwareRecModel(nn.Module):
    """Shared backbone + content and collaborative user/item tables + heads and losses.

    Steps return `(loss, reg)`: `loss` is the step's mean loss, `reg` the mutual
    regularization sum (times lambda_V); the optimizer minimizes `loss + reg`.
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
    ) -> None:
        super().__init__()
        if mutual_reg not in MUTUAL_REG:
            raise ValueError(f"mutual_reg={mutual_reg!r}: expected one of {MUTUAL_REG}")
        self.mutual_reg = mutual_reg
        self.backbone = backbone
        self.n_users, self.n_items = int(n_users), int(n_items)
        self.lambda_v = float(lambda_v)
        self.edge_bias = edge_bias
        self.freeze_backbone = bool(freeze_backbone)
        self.vocab = int(backbone.get_input_embeddings().weight.shape[0])
        d = int(backbone.get_input_embeddings().weight.shape[1])
        std = float(init_std if init_std is not None else getattr(backbone.config, "initializer_range", 0.02))
        self.tables = nn.ModuleDict()
        for side in SIDES:
            for ent, n in (("user", self.n_users), ("item", self.n_items)):
                emb = nn.Embedding(n, d)
                nn.init.normal_(emb.weight, std=std)
                self.tables[f"{side}_{ent}"] = emb
        # Which nodes (users, then items) occur in a content example: with mutual_reg
        # "content_entities" only they are regularized (see `set_content_nodes`).
        self.register_buffer("has_content", torch.ones(self.n_users + self.n_items, dtype=torch.bool))
        if freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        self.d6, self.max_hops = int(d6), int(max_hops)
        if edge_bias == "learned":
            # R = hop_bias[h, d] + edge_weight[h] * [d == 1]; at init the seed values exactly
            h = int(backbone.config.num_attention_heads)
            lut = relation_lut(max_hops, d6)
            self.hop_bias = nn.Parameter(torch.from_numpy(lut).repeat(h, 1))
            self.edge_weight = nn.Parameter(torch.zeros(h))

    # --- embeddings -------------------------------------------------------------------
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
        """One optimizer's parameters: the side's tables and the (trainable) shared backbone."""
        params = [self.tables[f"{side}_user"].weight, self.tables[f"{side}_item"].weight]
        params += [p for p in self.backbone.parameters() if p.requires_grad]
        if self.edge_bias == "learned":
            params += [self.hop_bias, self.edge_weight]
        return params

    # --- forward ----------------------------------------------------------------------
    def _mask(self, batch: dict[str, torch.Tensor], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        if self.edge_bias == "learned":
            cls = batch["hop_classes"].to(device)
            ent = cls >= 0
            c = cls.clamp(min=0).long()
            bias = self.hop_bias[:, c].permute(1, 0, 2, 3) + self.edge_weight[None, :, None, None] * (c == 1)[:, None]
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
        wte = self.backbone.get_input_embeddings()
        device = wte.weight.device
        ids = batch["input_ids"].to(device)
        nodes = batch["node_ids"].to(device)
        text = wte(ids.clamp(max=self.vocab - 1))
        ent = self.entity_embedding(nodes.clamp(min=0), side).to(text.dtype)
        embeds = torch.where((nodes >= 0)[..., None], ent, text)
        L = ids.shape[1]
        base = getattr(self.backbone, self.backbone.base_model_prefix)
        out = base(
            inputs_embeds=embeds,
            attention_mask=self._mask(batch, text.dtype, device),
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
        """lambda_V * sum ||E_this(t) - sg(E_other(t))||^2 over the batch's reg_nodes.

        With mutual_reg "content_entities", nodes without any content example are left out:
        their content embedding never learns from data, so pulling towards it (or it
        towards the collaborative one) only ties a free vector to random initial values.
        """
        nodes = batch["reg_nodes"].to(self.tables[f"{this}_user"].weight.device)
        if self.mutual_reg == "content_entities":
            nodes = nodes[self.has_content[nodes]]
        diff = self.entity_embedding(nodes, this) - self.entity_embedding(nodes, other).detach()
        return self.lambda_v * diff.pow(2).sum()

    # --- steps ------------------------------------------------------------------------
    def content_step(self, batch: dict[str, torch.Tensor], regularize: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean token cross-entropy of the main texts (LM head), and, when `regularize`, the
        content tables pulled towards the collaborative ones."""
        h = self.hidden_states(batch, "content")
        hs, y = self._targets(h, batch["labels"])
        logits = self.backbone.get_output_embeddings()(hs)
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
    def save(self, out_dir: str | Path) -> None:
        """`model.safetensors` (all weights) + `rec_config.json` + `backbone/config.json`."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_model(self, str(out / "model.safetensors"))
        self.backbone.config.save_pretrained(str(out / "backbone"))
        meta = {
            "n_users": self.n_users,
            "n_items": self.n_items,
            "lambda_v": self.lambda_v,
            "edge_bias": self.edge_bias,
            "freeze_backbone": self.freeze_backbone,
            "d6": self.d6,
            "max_hops": self.max_hops,
            "mutual_reg": self.mutual_reg,
        }
        (out / "rec_config.json").write_text(json.dumps(meta, indent=2))

    def load_weights(self, path: str | Path) -> None:
        """Load a `model.safetensors` written by `save` into this (same-shaped) model."""
        p = Path(path)
        f = p / "model.safetensors" if p.is_dir() else p
        missing, unexpected = load_model(self, str(f), strict=False)
        # Models saved before `has_content` existed regularized every entity: keep that.
        missing = [k for k in missing if k != "has_content"]
        if missing or unexpected:
            raise ValueError(f"{f}: weights do not fit this model (missing {missing[:5]}, unexpected {unexpected[:5]})")

    @classmethod
    def load(cls, run_dir: str | Path, attn_implementation: str = "sdpa", **overrides: Any) -> "EdgeAwareRecModel":
        """Rebuild from a folder written by `save` (no access to the original backbone)."""
        d = Path(run_dir)
        meta = json.loads((d / "rec_config.json").read_text())
        meta.update(overrides)
        config = AutoConfig.from_pretrained(str(d / "backbone"), trust_remote_code=False)
        check_backbone_supported(config, attn_implementation)
        backbone = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
        model = cls(backbone, **meta)
        model.load_weights(d)
        return model

