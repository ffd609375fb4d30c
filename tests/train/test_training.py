"""Training stages: resume, distributed evaluation, learning, loss checks, CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import BIN, CI_CONFIG, CI_RUN, planned_jobs, snakemake

from llm4rec.model.collate import global_batches
from llm4rec.model.edge_model import EdgeAwareRecModel
from llm4rec.train.checkpoint import Checkpoint, TrainingState, fingerprint
from llm4rec.train.loop import pretrain_schedule
from llm4rec.train.stage import PretrainSettings
from llm4rec.train.steps import NonFiniteLossError, local_share


def test_pretrain_schedule_follows_the_seed():
    plan = pretrain_schedule(
        PretrainSettings(
            content_epochs=3, collab_epochs=100, content_every=50, lr=1e-3, batch_content=4, batch_collab=32
        )
    )
    assert plan[:3] == [("content", False)] * 3
    assert len(plan) == 3 + 100 + 2
    assert plan[3 + 50] == ("content", True) and plan[-1] == ("content", True)
    assert sum(k == "collab" for k, _ in plan) == 100


def test_local_shares_cover_each_global_batch_once():
    for n_proc in (1, 2, 3):
        for batch in global_batches(37, 8):
            parts = [local_share(batch, n_proc, r) for r in range(n_proc)]
            real = np.concatenate([p for p, w in parts if w > 0])
            assert np.array_equal(real, batch)
            assert sum(w for _, w in parts) == pytest.approx(1.0)


def test_checkpoint_keeps_last_and_best_and_checks_fingerprint(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    ckpt = Checkpoint(tmp_path / "stage.ckpt", "abc")
    for epoch in range(3):
        state = TrainingState(epoch=epoch, best_score=float(epoch), best_epoch=epoch)
        ckpt.save(model, {"m": opt}, state, improved=epoch != 2)
    assert sorted(p.name for p in ckpt.dir.iterdir()) == ["best", "last"]
    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.1)
    state = Checkpoint(ckpt.dir, "abc").load(fresh, {"m": fresh_opt})
    assert state.epoch == 2 and torch.equal(fresh.weight, model.weight)
    assert fresh_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert Checkpoint(ckpt.dir, "other").load(fresh, {"m": fresh_opt}) is None
    assert not ckpt.dir.exists()


def test_fingerprint_changes_with_settings_version_and_inputs(tmp_path):
    f = tmp_path / "in.txt"
    f.write_text("a")
    base = fingerprint({"lr": 1}, "1", [f])
    assert fingerprint({"lr": 1}, "1", [f]) == base
    assert fingerprint({"lr": 2}, "1", [f]) != base
    assert fingerprint({"lr": 1}, "2", [f]) != base
    f.write_text("b")
    assert fingerprint({"lr": 1}, "1", [f]) != base


def test_nonfinite_loss_names_stage_epoch_and_batch(tmp_path):
    from llm4rec.model.backbone import build_tiny_backbone
    from llm4rec.model.collate import EdgeAwareCollator
    from llm4rec.model.edge_model import EdgeAwareRecModel
    from llm4rec.model.encoding import build_collab_examples
    from llm4rec.model.tokenization import train_bpe_tokenizer
    from llm4rec.train.stage import make_accelerator
    from llm4rec.train.steps import EpochPlan, StepKind, StepModule, Trainer, run_epoch

    tok = train_bpe_tokenizer(["some text has interacted with"] * 20, tmp_path / "tok", vocab_size=300)
    model = EdgeAwareRecModel(build_tiny_backbone(len(tok), 1, 16, 2, 64), 4, 6, edge_bias="none")
    ex = build_collab_examples([np.array([0, 1]), np.array([2, 3, 4])] * 2, tok, model.entity_vocab, 64)
    with torch.no_grad():
        model.tables["collab_user"].weight[2] = float("nan")  # user 2 is in the second batch
    acc = make_accelerator(0)
    opt = torch.optim.Adam(model.side_parameters("collab"), lr=1e-3)
    trainer = Trainer(StepModule(model), acc, EdgeAwareCollator(model.entity_vocab, None, "none"))
    with pytest.raises(NonFiniteLossError, match=r"pretrain epoch 7 \(collab\), batch 1"):
        run_epoch(trainer, opt, EpochPlan(StepKind.COLLAB, ex, 2, "pretrain epoch 7 (collab)", regularize=True))


def popularity_recall_at_20(processed: Path) -> float:
    """Item popularity on the same split, written out independently of the library."""
    inter = pd.read_parquet(processed / "interactions.parquet")
    train = inter[inter["split"] == "train"]
    counts = train["iid"].value_counts()
    n_items = int(inter["iid"].max()) + 1
    pop = np.zeros(n_items)
    pop[counts.index.to_numpy()] = counts.to_numpy()
    order = sorted(range(n_items), key=lambda i: (-pop[i], i))
    recalls = []
    for uid, test in inter[inter["split"] == "test"].groupby("uid"):
        seen = set(train.loc[train["uid"] == uid, "iid"])
        top = [i for i in order if i not in seen][:20]
        targets = set(test["iid"])
        recalls.append(len(targets & set(top)) / min(20, len(targets)))
    return float(np.mean(recalls))


@pytest.mark.slow
def test_demo_model_beats_popularity(demo_run):
    metrics = json.loads((demo_run / "results/demo/full-s0/metrics.json").read_text())
    pop = popularity_recall_at_20(demo_run / "results/demo/processed")
    assert metrics["test"]["users"] > 300
    assert metrics["test"]["Recall@20"] >= 1.1 * pop, (metrics["test"], pop)
    history = pd.read_csv(demo_run / "results/demo/full-s0/finetune/history.csv")
    assert metrics["epoch"] == int(history.loc[history["val_score"].idxmax(), "epoch"])
    assert not (demo_run / "results/demo/full-s0/finetune.ckpt").exists()


@pytest.mark.slow
def test_cli_recommend(demo_run):
    run = demo_run / "results/demo/full-s0"
    ok = subprocess.run(
        [str(BIN / "llm4rec"), "recommend", "--run", str(run), "--uid", "3", "--top", "5"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.strip().splitlines()
    assert lines[0].startswith("top 5 items for user_3") and len(lines) == 7
    assert lines[1].split() == ["rank", "iid", "item_id", "score", "title"] and "note:" not in ok.stderr
    recs = pd.read_parquet(run / "recommendations.parquet")
    first = recs[(recs["uid"] == 3) & (recs["rank"] == 1)].iloc[0]
    assert f"item_{int(first['iid'])}" in lines[2]
    bad = subprocess.run(
        [str(BIN / "llm4rec"), "recommend", "--run", str(run), "--user", "someone-new"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "no entity token" in bad.stderr


def _without_finetune_outputs(work: Path) -> None:
    """As before a first run: fine-tuning and evaluation outputs do not exist yet."""
    run = work / CI_RUN
    shutil.rmtree(run / "finetune")
    for name in ("metrics.json", "recommendations.parquet", "per_user.parquet"):
        (run / name).unlink()


def _start(work: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "snakemake"), *args],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _kill_after_first_epoch(work: Path, proc: subprocess.Popen, stage: str) -> int:
    state = work / CI_RUN / f"{stage}.ckpt" / "last" / "state.json"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if state.is_file():
            epoch = json.loads(state.read_text())["state"]["epoch"]
            if epoch >= 0:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return json.loads(state.read_text())["state"]["epoch"]  # the state as killed
        time.sleep(0.05)
    raise AssertionError(f"{stage} never wrote a checkpoint: {proc.communicate()[0][-3000:]}")


@pytest.mark.slow
def test_moved_checkout_reruns_nothing(ci_copy):
    """`ci_copy` is the trained `ci_base` in another folder: no rule's command or params holds
    an absolute path (launch.sh by $LLM4REC_SCRIPTS, stages by module name), so nothing reruns."""
    assert planned_jobs(snakemake(ci_copy, f"{CI_RUN}/metrics.json", "-n", *CI_CONFIG)) == {}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "planned"),
    [
        ("finetune: {lr: 0.002}", {"finetune": 1, "evaluate": 1}),
        ("evaluate: {batch_size: 64}", {"finetune": 1, "evaluate": 1}),
        ("pretrain: {lr: 0.002}", {"pretrain": 1, "finetune": 1, "evaluate": 1}),
    ],
)
def test_a_changed_setting_reruns_its_stage_and_those_after(ci_copy, change, planned):
    """A stage's rerun trigger holds only the settings it reads: tuning fine-tuning keeps the
    pre-trained model (fine-tuning validates with the `evaluate` batch size, so that reruns it)."""
    (ci_copy / "change.yaml").write_text(change + "\n")
    proc = snakemake(ci_copy, f"{CI_RUN}/metrics.json", "-n", *CI_CONFIG, "change.yaml")
    assert planned_jobs(proc) == planned


@pytest.mark.slow
def test_shared_users_change_nothing_where_every_user_has_content(ci_copy):
    """Every demo user wrote a review, so `finetune.shared_users` shares no vector: only
    fine-tuning and evaluation rerun, and they repeat the run without it to the digit."""
    reference = json.loads((ci_copy / CI_RUN / "metrics.json").read_text())
    (ci_copy / "shared.yaml").write_text("finetune: {shared_users: true}\n")
    target = f"{CI_RUN}/metrics.json"
    assert planned_jobs(snakemake(ci_copy, target, "-n", *CI_CONFIG, "shared.yaml")) == {"finetune": 1, "evaluate": 1}
    snakemake(ci_copy, target, "--cores", "1", *CI_CONFIG, "shared.yaml")
    model = EdgeAwareRecModel.load(ci_copy / CI_RUN / "finetune")
    assert bool(model.has_content[: model.n_users].all())
    assert model.user_row.tolist() == list(range(model.n_users))
    assert (
        "finetune: 0 users without content share one user vector"
        in (ci_copy / "logs/demo/full-s0/finetune.log").read_text()
    )
    assert json.loads((ci_copy / target).read_text()) == reference


@pytest.mark.slow
@pytest.mark.parametrize("lever", [None, "untied_head"])
def test_resume_after_kill_equals_uninterrupted_run(ci_copy, lever):
    """Killed after an epoch and rerun, fine-tuning resumes from its checkpoint and ends where
    an uninterrupted run ends; with `untied_head` the checkpoint carries the head's own table."""
    work = ci_copy
    target = f"{CI_RUN}/metrics.json"
    config = CI_CONFIG
    if lever:
        (work / "lever.yaml").write_text(f"finetune: {{{lever}: true}}\n")
        config = (*CI_CONFIG, "lever.yaml")
        snakemake(work, target, "--cores", "1", *config)  # the uninterrupted run
        model = EdgeAwareRecModel.load(work / CI_RUN / "finetune")
        assert model.rec_item is not None
        assert not torch.equal(model.rec_item, model.tables["collab_item"].weight)  # trained apart
    reference = json.loads((work / target).read_text())
    _without_finetune_outputs(work)
    proc = _start(work, target, "--cores", "1", *config)
    killed_at = _kill_after_first_epoch(work, proc, "finetune")
    snakemake(work, "--unlock", *config)
    snakemake(work, target, "--cores", "1", *config, "--rerun-incomplete")
    log = (work / "logs/demo/full-s0/finetune.log").read_text()
    assert f"resuming after epoch {killed_at}" in log
    assert ("the recommendation head has its own item table" in log) == bool(lever)
    resumed = json.loads((work / target).read_text())
    assert resumed == reference
    assert not (work / CI_RUN / "finetune.ckpt").exists()


@pytest.mark.slow
def test_changed_setting_after_kill_starts_over(ci_copy):
    work = ci_copy
    target = f"{CI_RUN}/metrics.json"
    _without_finetune_outputs(work)
    proc = _start(work, target, "--cores", "1", *CI_CONFIG)
    _kill_after_first_epoch(work, proc, "finetune")
    snakemake(work, "--unlock", *CI_CONFIG)
    (work / "changed.yaml").write_text("finetune: {epochs: 3, lr: 0.002, batch_size: 32, patience: 3}\n")
    snakemake(work, target, "--cores", "1", *CI_CONFIG, "changed.yaml", "--rerun-incomplete")
    log = (work / "logs/demo/full-s0/finetune.log").read_text()
    assert "finetune: starting at epoch 0" in log and "resuming" not in log
    history = pd.read_csv(work / CI_RUN / "finetune/history.csv")
    assert history["epoch"].tolist() == [0, 1, 2]


@pytest.mark.slow
def test_two_cpu_processes(ci_copy):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU: evaluation equals one process."""
    work = ci_copy
    run = work / CI_RUN
    one = json.loads((run / "metrics.json").read_text())
    one_recs = pd.read_parquet(run / "recommendations.parquet")
    (work / "two.yaml").write_text("launch: {num_processes: 2}\n")
    two = ("two.yaml",)
    # The process count is a param of the training rules: keep the trained checkpoint.
    snakemake(
        work,
        f"{CI_RUN}/metrics.json",
        "--cores",
        "1",
        *CI_CONFIG,
        *two,
        "--forcerun",
        "evaluate",
        "--rerun-triggers",
        "mtime",
    )
    log = (work / "logs/demo/full-s0/evaluate.log").read_text()
    assert log.count("2 processes of type DistributedType.MULTI_CPU") == 2
    assert json.loads((run / "metrics.json").read_text()) == one
    recs = pd.read_parquet(run / "recommendations.parquet")
    pd.testing.assert_frame_equal(recs, one_recs)
    per_user = pd.read_parquet(run / "per_user.parquet")
    inter = pd.read_parquet(work / "results/demo/processed/interactions.parquet")
    test_users = np.sort(inter.loc[inter["split"] == "test", "uid"].unique())
    assert per_user["uid"].is_unique and np.array_equal(per_user["uid"].to_numpy(), test_users)
    assert recs.groupby("uid").size().nunique() == 1 and set(recs["uid"]) == set(test_users)

    snakemake(work, f"{CI_RUN}/metrics.json", "--cores", "1", *CI_CONFIG, *two, "--forcerun", "finetune")
    ft_log = (work / "logs/demo/full-s0/finetune.log").read_text()
    assert ft_log.count("2 processes of type DistributedType.MULTI_CPU") == 2
    two_proc = json.loads((run / "metrics.json").read_text())
    print("1 process:", one["test"], "\n2 processes:", two_proc["test"])
    assert two_proc["test"]["users"] == one["test"]["users"]
    assert abs(two_proc["test"]["Recall@20"] - one["test"]["Recall@20"]) < 0.1


def test_micro_batches_cover_every_example_within_budget():
    from llm4rec.model.collate import micro_batches

    rng = np.random.default_rng(0)
    for _ in range(20):
        lengths = rng.integers(1, 300, rng.integers(1, 80))
        groups = micro_batches(lengths, 1000)
        assert np.array_equal(np.sort(np.concatenate(groups)), np.arange(len(lengths)))
        for g in groups:
            assert len(g) == 1 or len(g) * lengths[g].max() <= 1000


@pytest.mark.parametrize("step", ["content", "collab", "finetune"])
def test_micro_batched_step_equals_one_batch(tmp_path, step, monkeypatch):
    """Gradient accumulation over length-sorted micro-batches = the plain batch gradient."""
    import llm4rec.train.steps as training
    from llm4rec.model.backbone import build_tiny_backbone
    from llm4rec.model.collate import EdgeAwareCollator, micro_batches
    from llm4rec.model.edge_model import EdgeAwareRecModel
    from llm4rec.model.encoding import build_collab_examples, build_content_examples, build_finetune_examples
    from llm4rec.model.tokenization import train_bpe_tokenizer
    from llm4rec.train.stage import make_accelerator

    tok = train_bpe_tokenizer(["a short review", "a much longer review text " * 8] * 10, tmp_path / "t", 300)
    torch.manual_seed(0)
    model = EdgeAwareRecModel(build_tiny_backbone(len(tok), 1, 16, 2, 128), 6, 8, edge_bias="none")
    model.backbone.config.resid_pdrop = model.backbone.config.embd_pdrop = 0.0
    model.eval()  # no dropout: both paths see the same function
    ev = model.entity_vocab
    train = [np.arange(k % 5 + 1) for k in range(6)]
    inter = pd.DataFrame(
        {
            "uid": [0, 1, 2],
            "iid": [0, 1, 2],
            "split": ["train"] * 3,
            "review_text": ["a short review", "a much longer review text " * 8, "ok"],
        }
    )
    items = pd.DataFrame({"iid": np.arange(8), "title": [f"title {k}" for k in range(8)]})
    examples = {
        "content": build_content_examples(items, inter, None, tok, ev, 128),
        "collab": build_collab_examples(train, tok, ev, 128),
        "finetune": build_finetune_examples(train, tok, ev, 128, seed=0, epoch=0, hide_frac=0.2),
    }[step]
    batch = [examples[n] for n in range(min(6, len(examples)))]
    collate = EdgeAwareCollator(ev, None, "none")
    steps = training.StepModule(model)

    loss, reg = steps(collate(batch), step, True)
    (loss + reg).backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    monkeypatch.setattr(training, "MICRO_BATCH_TOKENS", 1)  # one example per micro-batch
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    acc = make_accelerator(0)
    lengths = np.array([len(x["input_ids"]) for x in batch])
    assert len(micro_batches(lengths, 1)) == len(batch)
    trainer = training.Trainer(steps, acc, collate)
    got_loss, got_reg = training.run_step(trainer, opt, batch, step, True, 1.0, "test")
    assert got_loss == pytest.approx(float(loss.detach()), rel=1e-5)
    assert got_reg == pytest.approx(float(reg.detach()), rel=1e-5)
    for n, p in model.named_parameters():
        if n in full:
            torch.testing.assert_close(p.grad, full[n], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_logs_tell_early_stop_best_epoch_and_test_metrics(ci_copy):
    """A learning rate too small to change any score: epoch 1 is no better than epoch 0, so
    fine-tuning stops early (patience 1) and keeps epoch 0; every log says it in plain lines."""
    work = ci_copy
    (work / "stop.yaml").write_text("finetune: {epochs: 4, lr: 1.0e-12, batch_size: 32, patience: 1}\n")
    snakemake(work, f"{CI_RUN}/metrics.json", "--cores", "1", *CI_CONFIG, "stop.yaml")
    logs = work / "logs/demo/full-s0"
    ft = (logs / "finetune.log").read_text()
    assert "finetune: stopped early after epoch 1 (2 of 4 epochs)" in ft, ft[-3000:]
    assert "keeping the best epoch, 0" in ft
    metrics = json.loads((work / CI_RUN / "metrics.json").read_text())
    assert metrics["epoch"] == 0
    epoch_lines = [line for line in ft.splitlines() if "finetune epoch 1:" in line and "validation" in line]
    assert len(epoch_lines) == 1 and "no improvement 1/1" in epoch_lines[0]
    pre = (logs / "pretrain.log").read_text()
    summaries = [line for line in (ft + pre).splitlines() if "epoch" in line and "loss" in line]
    assert summaries and not [line for line in summaries if "{" in line or re.search(r"\d\.\d{6}", line)]
    ev = (logs / "evaluate.log").read_text()
    recall = metrics["test"]["Recall@20"]
    assert f"test ({metrics['test']['users']} users, weights of fine-tuning epoch 0)" in ev
    assert f"Recall@20 {recall:.4g}," in ev


@pytest.mark.slow
def test_min_steps_stretch_the_schedule_of_a_small_data_set(ci_copy):
    """With one step per epoch (a batch larger than the demo's users), `min_steps: 3` turns
    `epochs: 1` into three epochs and patience 1 into 3: the log says so, and the run goes on
    through epochs without gain (lr 1e-12 changes no score) to the third."""
    work = ci_copy
    (work / "steps.yaml").write_text(
        "finetune: {epochs: 1, batch_size: 100000, min_steps: 3, patience: 1, lr: 1.0e-12, lr_decay: cosine}\n"
    )
    target = f"{CI_RUN}/metrics.json"
    assert planned_jobs(snakemake(work, target, "-n", *CI_CONFIG, "steps.yaml")) == {"finetune": 1, "evaluate": 1}
    snakemake(work, target, "--cores", "1", *CI_CONFIG, "steps.yaml")
    ft = (work / "logs/demo/full-s0/finetune.log").read_text()
    assert "finetune: 3 epochs instead of 1 and patience 3 instead of 1, to reach min_steps 3 at 1 steps" in ft
    assert "no improvement 2/3" in ft
    assert "finetune: ran all 3 epochs; keeping the best epoch, 0" in ft
    history = pd.read_csv(work / CI_RUN / "finetune" / "history.csv")
    assert history["epoch"].tolist() == [0, 1, 2]


def _damage(path: Path, how: str) -> None:
    """A damaged checkpoint file as a full disk or a crash outside the atomic rename leaves it."""
    if how == "header too large":  # safetensors' first 8 bytes: the header length
        path.write_bytes((1 << 40).to_bytes(8, "little") + path.read_bytes()[8:])
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(b"")


@pytest.mark.parametrize(
    ("name", "how"),
    [
        ("last/model.safetensors", "header too large"),
        ("last/model.safetensors", "truncated"),
        ("last/optimizer-m.pt", "truncated"),
        ("last/rng.pt", "empty"),
        ("last/state.json", "truncated"),
        ("best/model.safetensors", "header too large"),
    ],
)
def test_a_damaged_checkpoint_is_named_and_the_stage_starts_over(tmp_path, caplog, name, how):
    """No half-restored model: the warning names the file, the folder goes, and the fresh
    model and optimizer are untouched (so the next load does not meet the same file)."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    ckpt = Checkpoint(tmp_path / "stage.ckpt", "abc")
    ckpt.save(model, {"m": opt}, TrainingState(epoch=0, best_score=1.0, best_epoch=0), improved=True)
    _damage(ckpt.dir / name, how)
    fresh = torch.nn.Linear(3, 2)
    before = fresh.weight.detach().clone()
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.1)
    with caplog.at_level("WARNING", logger="llm4rec.train.checkpoint"):
        assert Checkpoint(ckpt.dir, "abc").load(fresh, {"m": fresh_opt}) is None
    assert str(ckpt.dir / name) in caplog.text and "starting the stage over" in caplog.text
    assert not ckpt.dir.exists()
    assert torch.equal(fresh.weight, before) and not fresh_opt.state_dict()["state"]


@pytest.mark.slow
def test_a_damaged_checkpoint_does_not_block_the_rerun(ci_copy):
    """Killed after a fine-tuning epoch, its saved weights then damaged: the rerun names the
    file, starts fine-tuning over and ends with the metrics of an uninterrupted run."""
    work = ci_copy
    reference = json.loads((work / CI_RUN / "metrics.json").read_text())
    target = f"{CI_RUN}/metrics.json"
    _without_finetune_outputs(work)
    proc = _start(work, target, "--cores", "1", *CI_CONFIG)
    _kill_after_first_epoch(work, proc, "finetune")
    damaged = work / CI_RUN / "finetune.ckpt/last/model.safetensors"
    _damage(damaged, "header too large")
    snakemake(work, "--unlock", *CI_CONFIG)
    snakemake(work, target, "--cores", "1", *CI_CONFIG, "--rerun-incomplete")
    log = (work / "logs/demo/full-s0/finetune.log").read_text()
    assert f"{CI_RUN}/finetune.ckpt/last/model.safetensors is damaged" in log
    assert "finetune: starting at epoch 0" in log and "resuming" not in log
    assert json.loads((work / target).read_text()) == reference


LAUNCH = Path(__file__).resolve().parents[2] / "workflow" / "scripts" / "launch.sh"


@pytest.mark.parametrize(("given", "seen"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_launcher_makes_openmp_wait_passively_unless_told(tmp_path, given, seen):
    """A real `accelerate launch` through launch.sh: its child process sees OMP_WAIT_POLICY
    PASSIVE (spinning threads starve other jobs on shared cores), or the caller's own policy."""
    script = tmp_path / "show.py"
    out = tmp_path / "seen.txt"
    script.write_text(f"import os\nopen({str(out)!r}, 'w').write(os.environ.get('OMP_WAIT_POLICY', 'unset'))\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    if given:
        env["OMP_WAIT_POLICY"] = given
    proc = subprocess.run(["bash", str(LAUNCH), "0", "1", str(script)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == seen
    assert f"OMP_WAIT_POLICY {seen}" in proc.stderr


@pytest.mark.slow
def test_a_second_run_of_a_training_stage_stops_naming_the_first(ci_copy):
    """Snakemake's file persistence removes `.snakemake/locks` whenever any run ends (README,
    notes), so a second `snakemake` on the same target starts the same fine-tuning: it must stop
    at once, naming the first, which then ends as if alone. The first run is paused (SIGSTOP)
    while it holds the lock, so that the second meets it whatever the machine's speed."""
    work = ci_copy
    reference = json.loads((work / CI_RUN / "metrics.json").read_text())
    target = f"{CI_RUN}/metrics.json"
    _without_finetune_outputs(work)
    first = _start(work, target, "--cores", "1", *CI_CONFIG)
    lock = work / CI_RUN / "finetune.lock"
    deadline = time.time() + 600
    while not (lock.is_file() and lock.read_text()) and time.time() < deadline and first.poll() is None:
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGSTOP)
    try:
        holder = lock.read_text().split(" since ", 1)[0]
        assert holder.startswith("pid "), holder
        shutil.rmtree(work / ".snakemake" / "locks")  # what another run's end does (upstream)
        second = snakemake(work, target, "--cores", "1", *CI_CONFIG, check=False)
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    log = (work / "logs/demo/full-s0/finetune.log").read_text(errors="replace")
    assert second.returncode != 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"the finetune stage of {CI_RUN} is being written by another process ({holder} since" in log, (
        log[-5000:] + second.stderr[-3000:]
    )
    assert f"lock file {CI_RUN}/finetune.lock" in log
    assert first.wait(timeout=1800) == 0, first.communicate()[0][-3000:]
    assert json.loads((work / target).read_text()) == reference
    assert not lock.exists()
