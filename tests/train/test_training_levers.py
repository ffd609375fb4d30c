"""The training levers (docs/method.md 6.5): learning-rate schedule, hidden fraction, mutual
regularization restricted to entities with content, users without content sharing one vector,
the recommendation head's own item table, and progress lines in logs."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

from llm4rec.core.logs import progress
from llm4rec.model.backbone import build_tiny_backbone
from llm4rec.model.collate import EdgeAwareCollator
from llm4rec.model.edge_model import EdgeAwareRecModel
from llm4rec.model.encoding import build_finetune_examples
from llm4rec.model.tokenization import EntityVocab, load_tokenizer, train_bpe_tokenizer
from llm4rec.train.stage import FinetuneSettings
from llm4rec.train.steps import lr_schedule, make_optimizer


def test_lr_schedule_warmup_then_cosine_to_zero():
    at = lr_schedule(1.0, total_steps=110, warmup_steps=10, decay="cosine")
    assert at(0) == pytest.approx(0.1) and at(9) == pytest.approx(1.0)
    assert at(10) == pytest.approx(1.0)
    assert at(60) == pytest.approx(0.5)
    assert at(110) == pytest.approx(0.0, abs=1e-12)
    assert all(at(s) >= at(s + 1) for s in range(10, 110))
    const = lr_schedule(0.3, total_steps=50)
    assert {const(s) for s in range(50)} == {0.3}


def test_min_steps_stretch_epochs_and_patience_only_where_they_fall_short():
    f = FinetuneSettings(epochs=16, lr=1e-3, batch_size=256, patience=16, min_steps=1400)
    assert f.stretched(88) == (16, 16)  # Beauty: 16 epochs of 88 steps are 1,408 steps
    assert f.stretched(12) == (117, 117)  # 3,000 users: ceil(1,400 / 12)
    assert f.stretched(1400) == (16, 16)
    assert replace(f, patience=4).stretched(12) == (117, 30)  # ceil(4 x 117 / 16)
    assert replace(f, min_steps=0).stretched(1) == (16, 16)


def test_weight_decay_switches_to_adamw():
    p = [torch.nn.Parameter(torch.ones(3))]
    assert type(make_optimizer(p, 1e-3)) is torch.optim.Adam
    assert isinstance(make_optimizer(p, 1e-3, 0.01), torch.optim.AdamW)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    train_bpe_tokenizer(iter(["has interacted with, will interact with"] * 20), d, vocab_size=300, min_frequency=1)
    return load_tokenizer(d)


@pytest.mark.parametrize("frac", [0.2, 0.5, 0.9])
def test_hide_frac_hides_that_share_but_never_all(tok, frac):
    train = [np.arange(10), np.arange(3), np.arange(1), np.arange(2)]
    ev = EntityVocab(len(tok), len(train), 10)
    ex = build_finetune_examples(train, tok, ev, 128, seed=0, epoch=0, hide_frac=frac)
    for n, items in enumerate(train):
        ids = ex[n]["input_ids"]
        shown = np.count_nonzero(ids >= ev.vocab + ev.n_users)
        expect_hidden = min(max(1, int(frac * len(items))), max(1, len(items) - 1))
        assert shown == len(items) - expect_hidden
        assert len(ex[n]["items"]) == len(items)  # the target is still every train item


def test_content_entities_regularize_only_nodes_with_content(tok):
    backbone = build_tiny_backbone(len(tok), n_layer=1, n_embd=16, n_head=2, n_positions=64)
    model = EdgeAwareRecModel(backbone, 3, 4, mutual_reg="content_entities")
    with torch.no_grad():
        for t in model.tables.values():
            t.weight.normal_()
    nodes = torch.tensor([0, 1, 2, 3, 4, 5, 6])
    batch = {"reg_nodes": nodes}
    full = model.regularization(batch, "collab", "content")
    model.set_content_nodes(torch.tensor([3, 4, 5, 6]))  # the items only
    items_only = model.regularization(batch, "collab", "content")
    diff = model.entity_embedding(nodes[3:], "collab") - model.entity_embedding(nodes[3:], "content")
    torch.testing.assert_close(items_only, diff.pow(2).sum())
    assert items_only < full
    model.mutual_reg = "all"
    torch.testing.assert_close(model.regularization(batch, "collab", "content"), full)
    with pytest.raises(ValueError, match="mutual_reg"):
        EdgeAwareRecModel(backbone, 3, 4, mutual_reg="some")


def test_progress_writes_lines_not_frames(caplog):
    caplog.set_level(logging.INFO, logger="llm4rec.test")
    bar = progress(range(100), "epoch 0", logger=logging.getLogger("llm4rec.test"))
    for k in bar:
        bar.set_postfix(loss=f"{k:.1f}")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10 and lines[-1].startswith("epoch 0: 100/100 (100%)")
    assert all("\r" not in line for line in lines) and "loss=99.0" in lines[-1]


def test_model_saved_before_has_content_and_user_row_still_loads(tmp_path):
    from safetensors.torch import load_file, save_file

    model = EdgeAwareRecModel(build_tiny_backbone(300, 1, 16, 2, 64), 3, 4)
    model.save(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights.pop("has_content")
    weights.pop("user_row")
    save_file(weights, tmp_path / "model.safetensors")
    old = EdgeAwareRecModel.load(tmp_path)
    assert bool(old.has_content.all())
    assert old.user_row.tolist() == [0, 1, 2]  # and each user reads their own row
    weights.pop("tables.collab_user.weight")
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="collab_user"):
        EdgeAwareRecModel.load(tmp_path)


def test_shared_users_read_one_row_from_the_mean_and_persist(tmp_path):
    model = EdgeAwareRecModel(build_tiny_backbone(300, 1, 16, 2, 64), 4, 3)
    with torch.no_grad():
        for t in model.tables.values():
            t.weight.normal_()
    model.set_content_nodes(torch.tensor([1, 4, 5, 6]))  # user 1 and the items have content
    before = {side: model.tables[f"{side}_user"].weight.detach().clone() for side in ("collab", "content")}
    assert model.share_contentless_users() == 3
    users = torch.arange(4)
    for side, table in before.items():
        rows = model.entity_embedding(users, side)
        for u in (0, 2, 3):
            torch.testing.assert_close(rows[u], table[[0, 2, 3]].mean(0))
        torch.testing.assert_close(rows[1], table[1])  # a user with content keeps their own
    items = torch.arange(4, 7)
    torch.testing.assert_close(model.entity_embedding(items, "collab"), model.tables["collab_item"].weight)
    # One shared parameter row: a gradient through any of the three users reaches it.
    model.entity_embedding(torch.tensor([3]), "collab").sum().backward()
    grad = model.tables["collab_user"].weight.grad
    assert grad[0].abs().sum() > 0 and grad[1:].abs().sum() == 0
    model.save(tmp_path)
    loaded = EdgeAwareRecModel.load(tmp_path)
    assert loaded.user_row.tolist() == [0, 1, 0, 0]
    torch.testing.assert_close(loaded.entity_embedding(users, "collab"), model.entity_embedding(users, "collab"))


def test_shared_users_without_contentless_users_change_nothing():
    model = EdgeAwareRecModel(build_tiny_backbone(300, 1, 16, 2, 64), 2, 3)
    before = model.tables["collab_user"].weight.detach().clone()
    assert model.share_contentless_users() == 0  # every node has content until told otherwise
    assert model.user_row.tolist() == [0, 1]
    torch.testing.assert_close(model.tables["collab_user"].weight, before)


def test_untied_head_scores_with_its_own_table_and_persists(tok, tmp_path):
    train = [np.array([0, 2]), np.array([1, 3, 4])]
    backbone = build_tiny_backbone(len(tok), n_layer=1, n_embd=16, n_head=2, n_positions=64)
    model = EdgeAwareRecModel(backbone, len(train), 5).eval()  # no dropout: scores comparable
    ev = model.entity_vocab
    batch = EdgeAwareCollator(ev, None, "none", 0)(
        [dict(x) for x in build_finetune_examples(train, tok, ev, 64, seed=0, epoch=0, hide_frac=0.5)]
    )
    tied = model.score(batch).detach()
    model.untie_head()
    head = model.rec_item
    torch.testing.assert_close(head, model.tables["collab_item"].weight)  # a copy to start from
    assert head.data_ptr() != model.tables["collab_item"].weight.data_ptr()
    torch.testing.assert_close(model.score(batch), tied)
    assert any(p is head for p in model.side_parameters("collab"))
    assert not any(p is head for p in model.side_parameters("content"))
    # The head's rows score; the collaborative table only feeds the prompt's items.
    with torch.no_grad():
        head[3] += 1.0
    h = model.hidden_states(batch, "collab")
    last = h[torch.arange(2), batch["lengths"] - 1]
    torch.testing.assert_close(model.score(batch), last @ head.T)
    loss, _ = model.finetune_step(batch)
    loss.backward()  # the loss alone: the regularizer reaches every train item's row
    assert head.grad is not None and head.grad.abs().sum() > 0
    shown = batch["node_ids"][batch["node_ids"] >= ev.n_users] - ev.n_users
    item_grad = model.tables["collab_item"].weight.grad.abs().sum(1)
    assert set(torch.nonzero(item_grad).flatten().tolist()) == set(shown.tolist())
    model.save(tmp_path)
    loaded = EdgeAwareRecModel.load(tmp_path).eval()
    torch.testing.assert_close(loaded.rec_item, head)
    torch.testing.assert_close(loaded.score(batch), model.score(batch))
    assert EdgeAwareRecModel(build_tiny_backbone(len(tok), 1, 16, 2, 64), 2, 5).rec_item is None
