"""Backbone loading and the edge-aware recommendation model (docs/method.md section 5).

One shared causal-LM backbone; a content and a collaborative side, each with its own user
and item tables. Entity tokens are embedded from the side's tables, text tokens from the
backbone's own embeddings; the sequence enters the backbone as `inputs_embeds` with the
additive `[B, 1, L, L]` (or, for `learned`, `[B, H, L, L]`) mask built by the collator.

Large backbones: `dtype` (float32, bfloat16, float16) sets the backbone's weights; the user and
item tables, which always train, stay float32 (as the master weights of mixed precision) and
enter the backbone cast to its dtype; under autocast (accelerate's mixed precision) the mask
takes the autocast dtype.
`lora` trains low-rank adapters (peft) instead of the backbone, and such a model saves only
the adapters, tables and the base model's name and revision.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_model, save_file, save_model
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from llm4rec.core.constants import IGNORE_INDEX, MASK_MIN
from llm4rec.graph.relation import EXACT_HOPS, RelationIndex, relation_lut
from llm4rec.model.backbone import (
    build_tiny_backbone,
    compute_dtype,
    dtype_name,
    enable_gradient_checkpointing,
    keep_layers,
    load_backbone,
    torch_dtype,
    wrap_lora,
)
from llm4rec.model.settings import (
    MUTUAL_REG,
    SIDES,
    ModelSettings,
    check_backbone_supported,
    lora_settings,
)
from llm4rec.model.tokenization import EntityVocab


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
        max_hops: int = EXACT_HOPS,
        init_std: float | None = None,
        mutual_reg: str = "all",
        lora: Mapping[str, Any] | None = None,
        gradient_checkpointing: bool = False,
        base_name: str | None = None,
        base_revision: str | None = None,
        backbone_layers: int | None = None,
        untied_head: bool = False,
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
                # float32 whatever the backbone's dtype: an optimizer step of about lr is below
                # bfloat16's resolution at these weights' scale once lr decays, and would be lost.
                self.tables[f"{side}_{ent}"] = emb
        # Which nodes (users, then items) occur in a content example: with mutual_reg
        # "content_entities" only they are regularized (see `set_content_nodes`).
        self.register_buffer("has_content", torch.ones(self.n_users + self.n_items, dtype=torch.bool))
        # The table row each user reads: their own, or after `share_contentless_users` one row
        # shared by every user without content.
        self.register_buffer("user_row", torch.arange(self.n_users))
        # The recommendation head's own item table after `untie_head`; None: the collaborative
        # item table is the head (the paper).
        self.rec_item: nn.Parameter | None = None
        if untied_head:
            self.untie_head()
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

    def share_contentless_users(self) -> int:
        """Make every user without content read one shared row of both user tables, starting
        at the mean of their rows; returns how many users share it.

        Such a user's own collaborative vector learns from one batch per epoch and nothing
        else ties it to anything (no content to regularize towards): it memorizes the user's
        train items and adds noise to a prediction the history already makes. Shared, the
        user is read from their history alone, like Mult-VAE's encoder."""
        rows = torch.nonzero(~self.has_content[: self.n_users]).flatten()
        if len(rows) == 0:
            return 0
        shared = rows[0]
        with torch.no_grad():
            for side in SIDES:
                table = self.tables[f"{side}_user"].weight
                table[shared] = table[self.user_row[rows]].float().mean(0).to(table.dtype)
            self.user_row[rows] = shared
        return len(rows)

    def untie_head(self) -> None:
        """Give the recommendation head its own item table, a copy of the collaborative one.

        Tied, one vector per item must both describe the item as an input (what having it says
        about a user) and score it as an output (which users it suits), as Mult-DAE's encoder
        and decoder would if they shared weights; untied, the prompt keeps reading the
        collaborative table (still regularized towards the content one) and the head learns
        its own rows from where pre-training left them."""
        self.rec_item = nn.Parameter(self.tables["collab_item"].weight.detach().clone())

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
        u = users(self.user_row[nodes.clamp(0, self.n_users - 1)])
        i = items((nodes - self.n_users).clamp(0, self.n_items - 1))
        return torch.where(is_user, u, i)

    def side_parameters(self, side: str) -> list[nn.Parameter]:
        """One optimizer's parameters: the side's tables and the trainable part of the shared
        backbone (all of it, the LoRA adapters only, or nothing when frozen)."""
        params = [self.tables[f"{side}_user"].weight, self.tables[f"{side}_item"].weight]
        if side == "collab" and self.rec_item is not None:
            params.append(self.rec_item)
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
        sel = lab != IGNORE_INDEX
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
        head = self.tables["collab_item"].weight
        logits = hs.to(head.dtype) @ head.T
        loss = F.cross_entropy(logits.float(), y)
        return loss, self.regularization(batch, "collab", "content")

    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Item logits `[B, n_items]` from the last prompt token (collaborative tables; the
        head's own item table once untied)."""
        h = self.hidden_states(batch, "collab")
        last = (batch["lengths"] - 1).to(h.device)
        h_last = h[torch.arange(h.shape[0], device=h.device), last]
        head = self.tables["collab_item"].weight if self.rec_item is None else self.rec_item
        return h_last.to(head.dtype) @ head.T

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
            "untied_head": self.rec_item is not None,
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
        # Models saved before `has_content` existed regularized every entity, and before
        # `user_row` each user read their own row: the defaults keep both.
        missing = [k for k in missing if k not in ("has_content", "user_row") and not self._is_base_weight(k)]
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
        max_hops=index.max_hops if index is not None else EXACT_HOPS,
        init_std=m.entity_init_std,
        mutual_reg=m.mutual_reg,
        lora=m.lora,
        gradient_checkpointing=m.gradient_checkpointing,
        backbone_layers=m.backbone_layers,
    )
