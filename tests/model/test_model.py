"""Backbones, edge-aware attention against a hand-written reference, heads and losses."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from transformers import (
    BloomConfig,
    FalconConfig,
    Gemma2Config,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
)

from llm4rec.core.constants import MASK_MIN
from llm4rec.graph.relation import RelationIndex
from llm4rec.model.backbone import build_tiny_backbone, load_backbone
from llm4rec.model.collate import EdgeAwareCollator
from llm4rec.model.edge_model import EdgeAwareRecModel
from llm4rec.model.encoding import (
    KIND,
    build_collab_examples,
    build_content_examples,
    build_eval_examples,
    build_finetune_examples,
)
from llm4rec.model.settings import check_backbone_supported, context_length

N_USERS, N_ITEMS = 6, 6


@pytest.fixture(scope="module")
def graph():
    """Path u0-i0-u1-i1-...: second-order prompts see 2, 4 and >= 6 hops."""
    n = N_USERS
    rows = np.concatenate([np.arange(n), np.arange(1, n)])
    cols = np.concatenate([np.arange(n), np.arange(n - 1)])
    m = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    return m, RelationIndex(m, max_hops=5)


def _train_items(m):
    return [np.flatnonzero(r) for r in m.toarray()]


def _content_batch_examples(tok, ev, m):
    items = pd.DataFrame({"iid": [0, 1], "title": ["Acme Home", None]})
    inter = pd.DataFrame(
        {"uid": [0, 1], "iid": [0, 1], "split": ["train", "train"], "review_text": ["great product", "great"]}
    )
    so = pd.DataFrame({"kind": ["brand"], "value": ["Acme"], "item_ids": [[0, 1, 2, 3, 5]]})
    return list(build_content_examples(items, inter, so, tok, ev, 64)[n] for n in range(4))


def _gpt2_dir(tmp_path, vocab, attn):
    torch.manual_seed(0)
    model = build_tiny_backbone(vocab, n_layer=2, n_embd=32, n_head=2, n_positions=64, attn_implementation=attn)
    assert model.config.n_embd == 32 and model.config.vocab_size == vocab
    path = tmp_path / "gpt2"
    model.save_pretrained(path)
    return path


def _llama_dir(tmp_path, vocab):
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    path = tmp_path / "llama"
    model.save_pretrained(path)
    return path


def _rec_model(path, attn, edge_bias="seed", **kw):
    torch.manual_seed(1)
    backbone = load_backbone(path, attn_implementation=attn)
    model = EdgeAwareRecModel(backbone, N_USERS, N_ITEMS, edge_bias=edge_bias, **kw)
    model.eval()
    return model


def reference_mask(batch, index) -> torch.Tensor:
    """causal + padding + R written out directly: R from `index.relation` per entity pair."""
    nodes = batch["node_ids"]
    B, L = nodes.shape
    R = torch.zeros(B, L, L)
    for b in range(B):
        pos = torch.nonzero(nodes[b] >= 0).flatten().tolist()
        for i in pos:
            for j in pos:
                R[b, i, j] = float(index.relation(np.array([int(nodes[b, i])]), np.array([int(nodes[b, j])]))[0])
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    pad = torch.arange(L)[None, :] < batch["lengths"][:, None]
    blocked = torch.where(causal[None] & pad[:, None, :], 0.0, MASK_MIN)
    return (R + blocked)[:, None]


def reference_embeds(model, batch, side):
    wte = model.backbone.get_input_embeddings().weight
    ids, nodes = batch["input_ids"], batch["node_ids"]
    out = wte[ids.clamp(max=model.vocab - 1)].clone()
    for b, t in torch.nonzero(nodes >= 0).tolist():
        n = int(nodes[b, t])
        tab = (
            model.tables[f"{side}_user"].weight[n] if n < N_USERS else model.tables[f"{side}_item"].weight[n - N_USERS]
        )
        out[b, t] = tab
    return out


def gpt2_reference(backbone, embeds, mask) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d) + mask) V layer by layer from the GPT-2 weights."""
    tr = backbone.transformer
    cfg = backbone.config
    B, L, E = embeds.shape
    H = cfg.n_head
    d = E // H
    x = embeds + tr.wpe.weight[:L]
    for blk in tr.h:
        a = F.layer_norm(x, (E,), blk.ln_1.weight, blk.ln_1.bias, cfg.layer_norm_epsilon)
        qkv = a @ blk.attn.c_attn.weight + blk.attn.c_attn.bias
        q, k, v = (t.reshape(B, L, H, d).transpose(1, 2) for t in qkv.split(E, dim=-1))
        s = q @ k.transpose(-1, -2) / math.sqrt(d) + mask
        o = (torch.softmax(s, dim=-1) @ v).transpose(1, 2).reshape(B, L, E)
        x = x + (o @ blk.attn.c_proj.weight + blk.attn.c_proj.bias)
        m = F.layer_norm(x, (E,), blk.ln_2.weight, blk.ln_2.bias, cfg.layer_norm_epsilon)
        m = m @ blk.mlp.c_fc.weight + blk.mlp.c_fc.bias
        m = 0.5 * m * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (m + 0.044715 * m.pow(3))))
        x = x + (m @ blk.mlp.c_proj.weight + blk.mlp.c_proj.bias)
    return F.layer_norm(x, (E,), tr.ln_f.weight, tr.ln_f.bias, cfg.layer_norm_epsilon)


def _valid(batch):
    L = batch["input_ids"].shape[1]
    return torch.arange(L)[None, :] < batch["lengths"][:, None]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_gpt2_matches_reference_attention(tok, graph, tmp_path, attn):
    m, idx = graph
    path = _gpt2_dir(tmp_path, len(tok), attn)
    model = _rec_model(path, attn)
    ev = model.entity_vocab
    finetune = build_finetune_examples(_train_items(m), tok, ev, 64, 0, 0, hide_frac=0.2)
    exs = _content_batch_examples(tok, ev, m) + [finetune[2]]
    batch = EdgeAwareCollator(ev, idx, "seed")(exs)
    assert batch["lengths"].min() < batch["lengths"].max()  # the batch is padded
    ref_mask = reference_mask(batch, idx)
    valid = _valid(batch)
    # the collator's mask is the reference mask on every query row of a real token
    torch.testing.assert_close(batch["attention_mask"][:, 0][valid], ref_mask[:, 0][valid], rtol=0, atol=0)
    # and the R values vary inside the second-order prompt
    so = batch["attention_mask"][int(torch.nonzero(batch["kinds"] == KIND["so_brand"])[0, 0]), 0]
    assert len(torch.unique(so[so > 0])) >= 3
    with torch.no_grad():
        got = model.hidden_states(batch, "content")
        ref = gpt2_reference(model.backbone, reference_embeds(model, batch, "content"), ref_mask)
    torch.testing.assert_close(got[valid], ref[valid], rtol=0, atol=1e-5)

    # edge_bias none: equal to the unmodified backbone fed a 2-D padding mask
    none = EdgeAwareCollator(ev, None, "none")(exs)
    with torch.no_grad():
        got = model.hidden_states(none, "content")
        plain = model.backbone.transformer(
            inputs_embeds=reference_embeds(model, none, "content"), attention_mask=valid.long()
        ).last_hidden_state
        ref = gpt2_reference(model.backbone, reference_embeds(model, none, "content"), reference_mask_none(none))
    torch.testing.assert_close(got[valid], plain[valid], rtol=0, atol=1e-5)
    torch.testing.assert_close(got[valid], ref[valid], rtol=0, atol=1e-5)


def reference_mask_none(batch):
    L = batch["input_ids"].shape[1]
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    pad = _valid(batch)
    return torch.where(causal[None] & pad[:, None, :], 0.0, MASK_MIN)[:, None]


def test_llama_eager_sdpa_agree_and_none_is_plain(tok, graph, tmp_path):
    m, idx = graph
    path = _llama_dir(tmp_path, len(tok))
    eager = _rec_model(path, "eager")
    sdpa = _rec_model(path, "sdpa")
    ev = eager.entity_vocab
    exs = _content_batch_examples(tok, ev, m) + [build_collab_examples(_train_items(m), tok, ev, 64)[3]]
    batch = EdgeAwareCollator(ev, idx, "seed")(exs)
    none = EdgeAwareCollator(ev, None, "none")(exs)
    valid = _valid(batch)
    with torch.no_grad():
        he = eager.hidden_states(batch, "collab")
        hs = sdpa.hidden_states(batch, "collab")
        hn = sdpa.hidden_states(none, "collab")
        plain = sdpa.backbone.model(
            inputs_embeds=reference_embeds(sdpa, none, "collab"), attention_mask=valid.long()
        ).last_hidden_state
    torch.testing.assert_close(he[valid], hs[valid], rtol=0, atol=1e-5)
    torch.testing.assert_close(hn[valid], plain[valid], rtol=0, atol=1e-5)
    assert (he[valid] - hn[valid]).abs().max() > 1e-3  # the bias does change the states


def test_refusals(tmp_path, tok):
    for attn in ("flash_attention_2", "flex_attention", "paged_attention"):
        with pytest.raises(ValueError, match="eager"):
            check_backbone_supported(GPT2Config(), attn)
    with pytest.raises(ValueError, match="sliding"):
        check_backbone_supported(MistralConfig(), "sdpa")
    with pytest.raises(ValueError, match="ALiBi"):
        check_backbone_supported(BloomConfig(), "eager")
    with pytest.raises(ValueError, match="ALiBi"):
        check_backbone_supported(FalconConfig(alibi=True), "eager")
    with pytest.raises(ValueError, match="soft-capping|sliding"):
        check_backbone_supported(Gemma2Config(), "eager")
    with pytest.raises(ValueError, match="soft-capping"):
        check_backbone_supported(Gemma2Config(sliding_window=None, layer_types=["full_attention"] * 26), "eager")
    check_backbone_supported(Qwen2Config(), "sdpa")
    check_backbone_supported(LlamaConfig(), "eager")
    path = _gpt2_dir(tmp_path, len(tok), "eager")
    with pytest.raises(ValueError, match="flash_attention_2"):
        load_backbone(path, attn_implementation="flash_attention_2")
    assert context_length(load_backbone(path, "eager").config) == 64


def _step_batches(tok, ev, m, idx):
    col = EdgeAwareCollator(ev, idx, "seed")
    tr = _train_items(m)
    content = col(_content_batch_examples(tok, ev, m))
    collab_ex = build_collab_examples(tr, tok, ev, 64)
    collab = col([collab_ex[1], collab_ex[4]])
    ft = build_finetune_examples(tr, tok, ev, 64, seed=0, epoch=0, hide_frac=0.2)
    finetune = col([ft[0], ft[3]])
    return content, collab, finetune


def test_losses_equal_hand_computation(tok, graph, tmp_path):
    m, idx = graph
    model = _rec_model(_gpt2_dir(tmp_path, len(tok), "eager"), "eager")
    ev = model.entity_vocab
    content, collab, finetune = _step_batches(tok, ev, m, idx)
    with torch.no_grad():
        # content: every main token, the first predicted from the last prompt token
        h = model.hidden_states(content, "content")
        wte = model.backbone.get_input_embeddings().weight
        terms = []
        for b in range(h.shape[0]):
            p, n = int(content["prompt_lengths"][b]), int(content["lengths"][b])
            for t in range(p, n):
                logits = h[b, t - 1] @ wte.T
                terms.append(torch.logsumexp(logits, 0) - logits[content["input_ids"][b, t]])
        assert len(terms) == int((content["lengths"] - content["prompt_lengths"]).sum())
        loss, reg = model.content_step(content, regularize=False)
        torch.testing.assert_close(loss, torch.stack(terms).mean(), rtol=1e-5, atol=1e-6)
        assert reg.item() == 0.0
        _, reg = model.content_step(content, regularize=True)
        hand = 0.0
        for b in range(h.shape[0]):
            for t in range(int(content["prompt_lengths"][b])):  # entity occurrences are all in the prompt
                n = int(content["node_ids"][b, t])
                if n >= 0:
                    key = "user" if n < N_USERS else "item"
                    k = n if n < N_USERS else n - N_USERS
                    hand += (
                        (model.tables[f"content_{key}"].weight[k] - model.tables[f"collab_{key}"].weight[k])
                        .pow(2)
                        .sum()
                    )
        torch.testing.assert_close(reg, hand, rtol=1e-5, atol=1e-6)

        # collaborative: cross-entropy over items at main-text item positions
        h = model.hidden_states(collab, "collab")
        items = model.tables["collab_item"].weight
        terms = []
        for b in range(2):
            p, n = int(collab["prompt_lengths"][b]), int(collab["lengths"][b])
            for t in range(p, n):
                logits = h[b, t - 1] @ items.T
                target = int(collab["input_ids"][b, t]) - ev.vocab - N_USERS
                terms.append(torch.logsumexp(logits, 0) - logits[target])
        loss, reg = model.collab_step(collab)
        torch.testing.assert_close(loss, torch.stack(terms).mean(), rtol=1e-5, atol=1e-6)
        # prompt user + each main item (users 1 and 4 of the path graph)
        nodes = [1, N_USERS + 0, N_USERS + 1, 4, N_USERS + 3, N_USERS + 4]
        diff = (
            torch.cat([model.tables["collab_user"].weight, items])[nodes]
            - torch.cat([model.tables["content_user"].weight, model.tables["content_item"].weight])[nodes]
        )
        torch.testing.assert_close(reg, diff.pow(2).sum(), rtol=1e-5, atol=1e-6)

        # fine-tuning: multinomial loss from the last prompt token
        h = model.hidden_states(finetune, "collab")
        last = h[torch.arange(2), finetune["lengths"] - 1]
        logp = torch.log_softmax(last @ items.T, -1)
        y = torch.zeros(2, N_ITEMS)
        y[0, [0]] = 1
        y[1, [2, 3]] = 1
        loss, reg = model.finetune_step(finetune)
        torch.testing.assert_close(loss, -(y * logp).sum(1).mean(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.score(finetune), last @ items.T)
        # the user twice, kept items once, each train item once
        nodes = []
        for b, u in enumerate((0, 3)):
            nodes += [n for n in finetune["node_ids"][b].tolist() if n >= 0]
            nodes += [N_USERS + i for i in _train_items(m)[u]]
        assert nodes.count(0) == 2 and nodes.count(3) == 2
        all_collab = torch.cat([model.tables["collab_user"].weight, items])
        all_content = torch.cat([model.tables["content_user"].weight, model.tables["content_item"].weight])
        torch.testing.assert_close(reg, (all_collab[nodes] - all_content[nodes]).pow(2).sum(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("freeze", [False, True])
def test_gradients_reach_tables_and_backbone(tok, graph, tmp_path, freeze):
    m, idx = graph
    model = _rec_model(_gpt2_dir(tmp_path, len(tok), "sdpa"), "sdpa", freeze_backbone=freeze)
    ev = model.entity_vocab
    content, collab, finetune = _step_batches(tok, ev, m, idx)
    t = model.tables
    for step, this, other in (
        (lambda: model.collab_step(collab), "collab", "content"),
        (lambda: model.content_step(content, regularize=True), "content", "collab"),
        (lambda: model.finetune_step(finetune), "collab", "content"),
    ):
        model.zero_grad(set_to_none=True)
        loss, reg = step()
        (loss + reg).backward()
        assert t[f"{this}_user"].weight.grad.abs().sum() > 0 and t[f"{this}_item"].weight.grad.abs().sum() > 0
        assert t[f"{other}_user"].weight.grad is None and t[f"{other}_item"].weight.grad is None
        grads = [p.grad for p in model.backbone.parameters()]
        if freeze:
            assert all(g is None for g in grads)
        else:
            assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    # the regularizer alone moves only the side it regularizes
    model.zero_grad(set_to_none=True)
    _, reg = model.collab_step(collab)
    reg.backward()
    assert t["content_item"].weight.grad is None and t["collab_item"].weight.grad.abs().sum() > 0
    n_opt = len(model.side_parameters("collab"))
    assert n_opt == 2 + (0 if freeze else len(list(model.backbone.parameters())))


def test_save_load_roundtrip(tok, graph, tmp_path):
    m, idx = graph
    model = _rec_model(_gpt2_dir(tmp_path, len(tok), "sdpa"), "sdpa")
    ev = model.entity_vocab
    batch = EdgeAwareCollator(ev, idx, "seed")(
        list(build_eval_examples(_train_items(m), tok, ev, 64)[n] for n in range(3))
    )
    model.save(tmp_path / "run")
    back = EdgeAwareRecModel.load(tmp_path / "run", attn_implementation="eager").eval()
    with torch.no_grad():
        torch.testing.assert_close(back.score(batch), model.score(batch), rtol=0, atol=1e-5)
    assert back.n_items == N_ITEMS and back.edge_bias == "seed"


def test_learned_bias_starts_at_seed(tok, graph, tmp_path):
    m, idx = graph
    path = _gpt2_dir(tmp_path, len(tok), "eager")
    seed = _rec_model(path, "eager")
    learned = _rec_model(path, "eager", edge_bias="learned")
    learned.load_state_dict(seed.state_dict(), strict=False)
    ev = seed.entity_vocab
    exs = _content_batch_examples(tok, ev, m)
    bs = EdgeAwareCollator(ev, idx, "seed")(exs)
    bl = EdgeAwareCollator(ev, idx, "learned")(exs)
    assert bl["hop_classes"].shape == bs["attention_mask"][:, 0].shape
    valid = _valid(bs)
    with torch.no_grad():
        torch.testing.assert_close(
            learned.hidden_states(bl, "content")[valid], seed.hidden_states(bs, "content")[valid], rtol=0, atol=1e-6
        )
    loss, _ = learned.content_step(bl, regularize=False)
    loss.backward()
    assert learned.hop_bias.grad.shape == (2, 7) and learned.hop_bias.grad[:, [0, 2, 4]].abs().sum() > 0
    assert any(p is learned.hop_bias for p in learned.side_parameters("content"))
