"""Modern backbones on CPU: GPT-2, LLaMA and Qwen2 in float32 and bfloat16, LoRA, gradient
checkpointing, the learned bias's initial values, and the paper config's code path.

Every backbone is a small random model the test saves itself (`save_pretrained`, no network).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

from llm4rec.graph.relation import RelationIndex
from llm4rec.model.backbone import load_backbone
from llm4rec.model.collate import EdgeAwareCollator
from llm4rec.model.edge_model import EdgeAwareRecModel
from llm4rec.model.encoding import (
    build_collab_examples,
    build_content_examples,
    build_eval_examples,
    build_finetune_examples,
)
from llm4rec.model.tokenization import load_tokenizer
from llm4rec.train.checkpoint import Checkpoint, TrainingState

REPO = Path(__file__).resolve().parents[2]
N_USERS, N_ITEMS = 6, 6
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def path_graph(n: int) -> sp.csr_matrix:
    """u0-i0-u1-i1-...: item k and item k+j are 2j hops apart, so prompts see 2, 4, 6+ hops."""
    rows = np.concatenate([np.arange(n), np.arange(1, n)])
    cols = np.concatenate([np.arange(n), np.arange(n - 1)])
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))


@pytest.fixture(scope="module")
def graph():
    m = path_graph(N_USERS)
    return m, RelationIndex(m, max_hops=5)


def tiny_config(arch: str, vocab: int):
    """2 layers, hidden 64: the architecture's own blocks at test size."""
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=128,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            resid_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
        )
    common = dict(
        vocab_size=vocab,
        bos_token_id=0,
        eos_token_id=0,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    if arch == "llama":
        return LlamaConfig(**common)
    return Qwen2Config(**common, use_sliding_window=False, tie_word_embeddings=True)


def save_backbone(folder: Path, arch: str, vocab: int, dtype: torch.dtype, tokenizer=None) -> Path:
    """A random model saved in `dtype` (as bf16 hub checkpoints are), with the tokenizer."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, vocab), dtype=dtype)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def train_items(m):
    return [np.flatnonzero(r) for r in m.toarray()]


def step_batches(tok, ev, m, idx, edge_bias="seed"):
    col = EdgeAwareCollator(ev, idx, edge_bias)
    items = pd.DataFrame({"iid": [0, 1], "title": ["Acme Home", None]})
    inter = pd.DataFrame(
        {"uid": [0, 1], "iid": [0, 1], "split": ["train", "train"], "review_text": ["great product", "great"]}
    )
    so = pd.DataFrame({"kind": ["brand"], "value": ["Acme"], "item_ids": [[0, 1, 2, 3, 5]]})
    content = build_content_examples(items, inter, so, tok, ev, 64)
    tr = train_items(m)
    collab = build_collab_examples(tr, tok, ev, 64)
    ft = build_finetune_examples(tr, tok, ev, 64, seed=0, epoch=0, hide_frac=0.2)
    ev_ex = build_eval_examples(tr, tok, ev, 64)
    return {
        "content": col([content[n] for n in range(len(content))]),
        "collab": col([collab[1], collab[4]]),
        "finetune": col([ft[0], ft[3]]),
        "eval": col([ev_ex[n] for n in range(3)]),
    }


def run_steps(model: EdgeAwareRecModel, batches: dict) -> dict[str, float]:
    """One Adam step of each kind; returns the losses (float32, finite)."""
    out = {}
    for kind, side in (("content", "content"), ("collab", "collab"), ("finetune", "collab")):
        opt = torch.optim.Adam(model.side_parameters(side), lr=1e-3)
        opt.zero_grad(set_to_none=True)
        if kind == "content":
            loss, reg = model.content_step(batches[kind], regularize=True)
        elif kind == "collab":
            loss, reg = model.collab_step(batches[kind])
        else:
            loss, reg = model.finetune_step(batches[kind])
        assert loss.dtype == torch.float32 and reg.dtype == torch.float32
        assert torch.isfinite(loss) and torch.isfinite(reg), (kind, loss, reg)
        (loss + reg).backward()
        opt.step()
        out[kind] = float(loss.detach())
    return out


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_backbone_trains_and_scores(tok, graph, tmp_path, arch, dtype):
    m, idx = graph
    dt = DTYPES[dtype]
    path = save_backbone(tmp_path / arch, arch, len(tok), torch.bfloat16 if dtype == "bfloat16" else torch.float32)
    # A bf16 checkpoint loads as float32 unless asked (transformers 5's "auto" would keep bf16).
    assert load_backbone(path, "sdpa").dtype == torch.float32
    torch.manual_seed(1)
    model = EdgeAwareRecModel(load_backbone(path, "sdpa", dtype=dt), N_USERS, N_ITEMS)
    # The tables train in every dtype, so they stay float32 (mixed precision's master weights).
    assert all(t.weight.dtype == torch.float32 for t in model.tables.values())
    batches = step_batches(tok, model.entity_vocab, m, idx)
    mask = model._mask(batches["content"], dt, torch.device("cpu"))
    assert mask.dtype == dt and not torch.isinf(mask).any() and mask.min() == torch.finfo(dt).min
    losses = run_steps(model, batches)
    assert all(np.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        scores = model.score(batches["eval"])
    assert scores.shape == (3, N_ITEMS) and scores.dtype == torch.float32 and torch.isfinite(scores).all()


def test_small_table_updates_survive_a_bfloat16_backbone(tok, graph, tmp_path):
    """An Adam step of 1e-5 (a cosine's tail) moves the rows it trains under a bfloat16 backbone:
    in bfloat16 itself, at the tables' scale (0.02: a resolution of 1.2e-4), it would round away."""
    m, idx = graph
    path = save_backbone(tmp_path / "gpt2", "gpt2", len(tok), torch.float32)
    torch.manual_seed(1)
    model = EdgeAwareRecModel(load_backbone(path, "sdpa", dtype=torch.bfloat16), N_USERS, N_ITEMS)
    batch = step_batches(tok, model.entity_vocab, m, idx)["finetune"]
    table = model.tables["collab_item"].weight
    before = table.detach().clone()
    opt = torch.optim.Adam([table], lr=1e-5)
    loss, reg = model.finetune_step(batch)
    (loss + reg).backward()
    trained = table.grad.abs().sum(1) > 0
    opt.step()
    moved = (table.detach() - before).abs()
    assert trained.any() and (moved[trained] > 0).all()
    # The same step applied in bfloat16 leaves weights unchanged: what the float32 tables keep.
    in_bf16 = before.bfloat16() + (table.detach() - before).bfloat16()
    assert (in_bf16 == before.bfloat16())[trained].any()


def test_half_precision_follows_float32(tok, graph, tmp_path):
    """bfloat16 computes the same function as float32 up to its rounding."""
    m, idx = graph
    path = save_backbone(tmp_path / "qwen2", "qwen2", len(tok), torch.float32)
    out = {}
    for dt in (torch.float32, torch.bfloat16):
        torch.manual_seed(1)
        model = EdgeAwareRecModel(load_backbone(path, "eager", dtype=dt), N_USERS, N_ITEMS).eval()
        with torch.no_grad():
            out[dt] = model.collab_step(step_batches(tok, model.entity_vocab, m, idx)["collab"])[0]
    assert abs(float(out[torch.bfloat16]) - float(out[torch.float32])) < 0.05 * float(out[torch.float32])


def test_autocast_mask_takes_the_compute_dtype(tok, graph, tmp_path):
    """Mixed precision (accelerate's autocast): float32 weights, bf16 mask with bf16's minimum."""
    m, idx = graph
    model = EdgeAwareRecModel(
        load_backbone(save_backbone(tmp_path / "l", "llama", len(tok), torch.float32), "sdpa"), N_USERS, N_ITEMS
    )
    batches = step_batches(tok, model.entity_vocab, m, idx)
    seen = []
    hook = model.lm.model.layers[0].self_attn.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["attention_mask"]), with_kwargs=True
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, reg = model.collab_step(batches["collab"])
    hook.remove()
    assert seen[0].dtype == torch.bfloat16 and not torch.isinf(seen[0]).any()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    (loss + reg).backward()
    assert model.tables["collab_item"].weight.grad.dtype == torch.float32


# --- LoRA --------------------------------------------------------------------------------

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


@pytest.fixture
def lora_model(tok, tmp_path):
    path = save_backbone(tmp_path / "qwen2", "qwen2", len(tok), torch.float32)
    torch.manual_seed(1)
    return EdgeAwareRecModel(load_backbone(path, "sdpa"), N_USERS, N_ITEMS, lora=LORA), path


def test_lora_edge_bias_reaches_every_layer(tok, graph, lora_model):
    m, idx = graph
    model, _ = lora_model
    model.eval()
    with torch.no_grad():  # non-zero adapters, so that the LoRA path is part of the output
        for n, p in model.backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
    ev = model.entity_vocab
    seed = step_batches(tok, ev, m, idx)["content"]
    zero = step_batches(tok, ev, m, None, "none")["content"]  # R = 0, same causal + padding
    layers = model.lm.model.layers
    seen: list[torch.Tensor] = []
    hooks = [
        layer.self_attn.register_forward_pre_hook(
            lambda mod, args, kwargs: seen.append(kwargs["attention_mask"]), with_kwargs=True
        )
        for layer in layers
    ]
    with torch.no_grad():
        h_seed = model.hidden_states(seed, "content")
        h_zero = model.hidden_states(zero, "content")
    for h in hooks:
        h.remove()
    assert len(seen) == 2 * len(layers)
    for got in seen[: len(layers)]:
        torch.testing.assert_close(got, seed["attention_mask"], rtol=0, atol=0)
    valid = torch.arange(h_seed.shape[1])[None, :] < seed["lengths"][:, None]
    assert (h_seed[valid] - h_zero[valid]).abs().max() > 1e-3


def test_lora_step_changes_only_adapters_and_tables(tok, graph, lora_model):
    m, idx = graph
    model, _ = lora_model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("tables.") for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    run_steps(model, step_batches(tok, model.entity_vocab, m, idx))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trainable
    assert any("lora_B" in n for n in changed)
    assert {"tables.content_item.weight", "tables.collab_item.weight"} <= changed
    for opt_side in ("content", "collab"):
        names = {id(p) for p in model.side_parameters(opt_side)}
        assert all(id(p) in names for n, p in model.named_parameters() if "lora_" in n)


def test_lora_save_load_and_resume(tok, graph, lora_model, tmp_path):
    m, idx = graph
    model, path = lora_model
    batches = step_batches(tok, model.entity_vocab, m, idx)
    run_steps(model, batches)
    run_steps(model, batches)  # now lora_A moves too
    model.eval()
    with torch.no_grad():
        want = model.score(batches["eval"])
    model.save(tmp_path / "run")
    keys = set(load_file(tmp_path / "run" / "model.safetensors"))
    assert keys and all("lora_" in k or k.startswith("tables.") or k in ("has_content", "user_row") for k in keys)
    meta = json.loads((tmp_path / "run" / "rec_config.json").read_text())
    assert meta["base_name"] == str(path) and meta["lora"]["r"] == 4 and "base_revision" in meta
    back = EdgeAwareRecModel.load(tmp_path / "run", attn_implementation="sdpa").eval()
    with torch.no_grad():
        torch.testing.assert_close(back.score(batches["eval"]), want, rtol=0, atol=0)

    # resume: the training checkpoint holds the same subset, and restores weights and Adam
    opt = torch.optim.Adam(model.side_parameters("collab"), lr=1e-3)
    model.train()
    loss, reg = model.collab_step(batches["collab"])
    (loss + reg).backward()
    opt.step()
    ckpt = Checkpoint(tmp_path / "ckpt", "fp")
    ckpt.save(model, {"collab": opt}, TrainingState(epoch=3), improved=True)
    assert set(load_file(ckpt.dir / "last" / "model.safetensors")) == keys
    fresh = EdgeAwareRecModel.load(tmp_path / "run", attn_implementation="sdpa")
    fresh_opt = torch.optim.Adam(fresh.side_parameters("collab"), lr=1e-3)
    state = Checkpoint(ckpt.dir, "fp").load(fresh, {"collab": fresh_opt})
    assert state.epoch == 3
    for (n, p), (_, q) in zip(model.named_parameters(), fresh.named_parameters()):
        assert torch.equal(p, q), n
    assert fresh_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_lora_refusals(tok, tmp_path):
    path = save_backbone(tmp_path / "g", "gpt2", len(tok), torch.float32)
    with pytest.raises(ValueError, match="freeze_backbone"):
        EdgeAwareRecModel(load_backbone(path), N_USERS, N_ITEMS, lora={"r": 2}, freeze_backbone=True)
    with pytest.raises(ValueError, match="unknown keys"):
        EdgeAwareRecModel(load_backbone(path), N_USERS, N_ITEMS, lora={"r": 2, "rank": 3})
    # GPT-2's default target is c_attn (peft's mapping)
    model = EdgeAwareRecModel(load_backbone(path), N_USERS, N_ITEMS, lora={"r": 2})
    assert any("c_attn.lora_A" in n for n, _ in model.named_parameters())


# --- gradient checkpointing ----------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_gradient_checkpointing_keeps_loss_and_gradients(tok, graph, tmp_path, arch):
    m, idx = graph
    path = save_backbone(tmp_path / arch, arch, len(tok), torch.float32)
    got = {}
    for gc in (False, True):
        torch.manual_seed(1)
        model = EdgeAwareRecModel(load_backbone(path, "sdpa"), N_USERS, N_ITEMS, gradient_checkpointing=gc)
        model.train()  # checkpointing only acts in training mode (the configs have no dropout)
        assert model.lm.is_activation_checkpointing == gc
        loss, reg = model.collab_step(step_batches(tok, model.entity_vocab, m, idx)["collab"])
        (loss + reg).backward()
        got[gc] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(got[True][0], got[False][0], rtol=1e-6, atol=1e-6)
    assert got[True][1].keys() == got[False][1].keys()
    for n, g in got[False][1].items():
        torch.testing.assert_close(got[True][1][n], g, rtol=1e-5, atol=1e-7)


# --- learned bias ------------------------------------------------------------------------


@pytest.mark.parametrize("max_hops", [1, 2, 3, 5])
def test_learned_mask_at_init_is_the_seed_mask(tok, tmp_path, max_hops):
    """Every pair starts at its seed value, also past a horizon below 5 hops."""
    n = 8
    m = path_graph(n)
    path = save_backbone(tmp_path / "g", "gpt2", len(tok), torch.float32)
    learned_idx = RelationIndex(m, max_hops=max_hops)
    model = EdgeAwareRecModel(load_backbone(path), n, n, edge_bias="learned", d6=learned_idx.d6, max_hops=max_hops)
    extra = [name for name, _ in model.named_parameters() if not name.startswith(("backbone.", "tables."))]
    assert extra == ["hop_bias"]
    assert model.hop_bias.shape == (4, max_hops + 2)  # one scalar per head and hop class
    ev = model.entity_vocab
    so = pd.DataFrame({"kind": ["brand"], "value": ["Acme"], "item_ids": [list(range(n))]})
    items = pd.DataFrame({"iid": [0, 1], "title": ["Acme Home", None]})
    inter = pd.DataFrame({"uid": [0], "iid": [0], "split": ["train"], "review_text": ["great"]})
    content = build_content_examples(items, inter, so, tok, ev, 64)
    finetune = build_finetune_examples(train_items(m), tok, ev, 64, 0, 0, hide_frac=0.2)
    exs = [content[k] for k in range(len(content))] + [finetune[4]]
    learned = EdgeAwareCollator(ev, learned_idx, "learned")(exs)
    seed = EdgeAwareCollator(ev, RelationIndex(m, max_hops=5), "seed")(exs)
    got = model._mask(learned, torch.float32, torch.device("cpu"))
    want = seed["attention_mask"].expand_as(got)
    valid = (torch.arange(got.shape[-1])[None, :] < seed["lengths"][:, None])[:, None, :, None].expand_as(got)
    torch.testing.assert_close(got[valid], want[valid], rtol=0, atol=1e-6)
    assert len(torch.unique(want[valid][want[valid] > -1])) >= 4  # 0, 1, 2, 4 and 6+ hops appear


def test_old_learned_weights_fold_edge_weight(tok, tmp_path):
    path = save_backbone(tmp_path / "g", "gpt2", len(tok), torch.float32)
    model = EdgeAwareRecModel(load_backbone(path), N_USERS, N_ITEMS, edge_bias="learned")
    model.save(tmp_path / "run")
    f = tmp_path / "run" / "model.safetensors"
    state = load_file(f)
    edge_weight = torch.tensor([0.5, -0.25, 1.0, 2.0])
    with safe_open(str(f), framework="pt") as fh:
        meta = fh.metadata()
    save_file({**state, "edge_weight": edge_weight}, str(f), metadata=meta)  # a file from before the fix
    back = EdgeAwareRecModel.load(tmp_path / "run", attn_implementation="sdpa")
    want = state["hop_bias"].clone()
    want[:, 1] += edge_weight
    torch.testing.assert_close(back.hop_bias.detach(), want, rtol=0, atol=0)


# --- the paper config's code path ------------------------------------------------------------


def test_paper_config_code_path(tok, graph, tmp_path):
    """configs/paper.yaml over config.yaml, with `backbone` a local GPT-2-shaped folder:
    start-up checks, model building, one step of each kind and scoring as the stages run them."""
    from llm4rec.core import config as config_check
    from llm4rec.data.preprocess import Processed
    from llm4rec.model.checks import check_backbone
    from llm4rec.model.collate import MICRO_BATCH_TOKENS
    from llm4rec.model.edge_model import build_model
    from llm4rec.model.settings import ModelSettings, backbone_geometry, context_length
    from llm4rec.model.tokenization import pad_token_id, tokenizer_source
    from llm4rec.train.evaluate import Scorer
    from llm4rec.train.stage import RunSettings, make_accelerator
    from llm4rec.train.steps import StepModule, Trainer, make_optimizer, run_step

    m, idx = graph
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    paper = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    settings = {**config, **{k: ({**config[k], **v} if isinstance(v, dict) else v) for k, v in paper.items()}}
    model_settings = settings["model"]
    assert model_settings["backbone"] == "gpt2"
    folder = save_backbone(tmp_path / "gpt2", "gpt2", len(tok), torch.float32, tokenizer=tok)
    model_settings["backbone"] = str(folder)
    check_backbone(model_settings["backbone"], model_settings["attn_implementation"])
    config_check.check_precision(settings)

    run = RunSettings.from_dict(
        {"seed": 0, **{k: settings[k] for k in ("data_seed", "model", "pretrain", "finetune", "evaluate")}}
    )
    typed = run.model
    assert typed == ModelSettings.from_dict(model_settings)
    tokenizer = load_tokenizer(tokenizer_source(typed.backbone, None))
    assert backbone_geometry(typed.backbone, typed.tiny, tokenizer, None) == (len(tok), 128)
    users, items_of = m.nonzero()
    inter = pd.DataFrame({"uid": users, "iid": items_of, "split": "train"})
    data = Processed(N_USERS, N_ITEMS, inter)
    assert [list(t) for t in data.train_items] == [list(t) for t in train_items(m)]
    model = build_model(typed, tokenizer, data.n_users, data.n_items, idx, seed=0)
    assert (
        not model.lora
        and model.weight_dtype == torch.float32
        and context_length(model.lm.config, typed.max_length) == 128
    )
    acc = make_accelerator(0)
    steps = StepModule(model)
    ev = model.entity_vocab
    collate = EdgeAwareCollator(ev, idx, model_settings["edge_bias"], pad_token_id(tokenizer))
    tr = train_items(m)
    items = pd.DataFrame({"iid": [0, 1], "title": ["Acme Home", None]})
    so = pd.DataFrame({"kind": ["brand"], "value": ["Acme"], "item_ids": [[0, 1, 2, 3, 5]]})
    reviews = pd.DataFrame(
        {"uid": np.arange(N_USERS), "iid": np.arange(N_USERS), "split": "train", "review_text": "great product"}
    )
    for kind, side, exs in (
        ("content", "content", build_content_examples(items, reviews, so, tok, ev, 128)),
        ("collab", "collab", build_collab_examples(tr, tok, ev, 128)),
        ("finetune", "collab", build_finetune_examples(tr, tok, ev, 128, seed=0, epoch=0, hide_frac=0.2)),
    ):
        opt = make_optimizer(model.side_parameters(side), run.pretrain.lr)
        loss, reg = run_step(
            Trainer(steps, acc, collate), opt, [exs[k] for k in range(len(exs))], kind, True, 1.0, kind
        )
        assert np.isfinite(loss) and np.isfinite(reg)
    scorer = Scorer(model, tokenizer, data, idx, 128, run.evaluate.batch_size)
    assert scorer.max_tokens >= MICRO_BATCH_TOKENS
    scores = scorer(np.arange(N_USERS))
    assert scores.shape == (N_USERS, N_ITEMS) and torch.isfinite(scores).all()


# --- settings: schema, start-up checks, launch ------------------------------------------------


def _config(**model):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["model"].update(model)
    return config


def test_schema_takes_the_new_settings():
    from jsonschema import Draft202012Validator

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    check = Draft202012Validator(schema)
    assert not list(check.iter_errors(_config()))
    good = _config(dtype="bfloat16", gradient_checkpointing=True, lora={"r": 8, "target_modules": ["q_proj"]})
    good["launch"]["mixed_precision"] = False  # a bare YAML `no`
    assert not list(check.iter_errors(good))
    for bad in (_config(dtype="float64"), _config(lora={"alpha": 4}), _config(lora={"r": 8, "rank": 2})):
        assert list(check.iter_errors(bad))


def test_start_up_refuses_conflicting_precision_and_lora():
    from llm4rec.core.config import ConfigError, check_precision

    check_precision(_config())
    mixed = _config(dtype="bfloat16")
    mixed["launch"]["mixed_precision"] = "bf16"
    with pytest.raises(ConfigError, match="mixed precision keeps float32"):
        check_precision(mixed)
    with pytest.raises(ConfigError, match="not tiny"):
        check_precision(_config(lora={"r": 4}))
    frozen = _config(backbone="gpt2", lora={"r": 4})
    check_precision(frozen)
    frozen["variants"]["frozen"] = {"freeze_backbone": True}
    frozen["run_variants"] = ["full", "frozen"]
    with pytest.raises(ConfigError, match="variants.frozen: freeze_backbone"):
        check_precision(frozen)


@pytest.mark.parametrize("args, expected", [([], "no"), (["--mixed_precision", "bf16"], "bf16")])
def test_launch_passes_mixed_precision(tmp_path, args, expected):
    import os
    import subprocess

    fake = tmp_path / "accelerate"
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": os.pathsep.join([str(tmp_path), os.environ["PATH"]])}
    out = subprocess.run(
        ["bash", str(REPO / "workflow/scripts/launch.sh"), *args, "0", "1", "train.py", "--x", "1"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.split()
    i = out.index("--mixed_precision")
    assert out[i + 1] == expected and out[-3:] == ["train.py", "--x", "1"]
    bad = subprocess.run(
        ["bash", str(REPO / "workflow/scripts/launch.sh"), "--mixed_precision", "fp8", "0", "1", "t.py"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 2 and "must be no, bf16 or fp16" in bad.stderr
