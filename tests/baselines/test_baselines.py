"""Baselines against direct dense numpy computations written here, plus Multi-VAE behaviour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from conftest import evaluate_scores

from llm4rec.baselines.ease import EASE, EASEMemoryError, fit_ease_grid
from llm4rec.baselines.itemknn import ItemKNN
from llm4rec.baselines.multivae import train_multivae
from llm4rec.baselines.popularity import Popularity
from llm4rec.core.memory import ease_memory_bytes
from llm4rec.metrics import RankingEvaluator, selection_score


def _random_binary(seed, n_users=40, n_items=18, density=0.25):
    rng = np.random.default_rng(seed)
    x = (rng.random((n_users, n_items)) < density).astype(np.float64)
    x[:, -1] = 0  # an item nobody interacted with
    x[0] = 0  # a user without train items
    return x


# ---------------------------------------------------------------- popularity
def test_popularity_ranks_by_train_counts_ties_by_id():
    x = np.array([[1, 1, 0, 0, 1], [0, 1, 0, 1, 1], [0, 1, 0, 1, 0], [0, 0, 0, 0, 0]], dtype=np.float32)
    model = Popularity().fit(sp.csr_matrix(x))
    scores = model.score(np.array([0, 3]))
    np.testing.assert_array_equal(scores.numpy(), np.tile(x.sum(0), (2, 1)))
    # Every user gets the target item 2 so all are evaluated; counts 1,3,0,2,2.
    target = np.zeros_like(x)
    target[:, 2] = 1
    res = evaluate_scores(model.score, sp.csr_matrix(x), sp.csr_matrix(target), top_n=5)
    lists = {u: g["iid"].tolist() for u, g in res.top_k.groupby("uid")}
    assert lists[3] == [1, 3, 4, 0, 2]  # ties 3/4 by id; nothing excluded
    assert lists[0] == [3, 2]  # train items 0, 1, 4 excluded
    assert lists[2] == [4, 0, 2]


# ---------------------------------------------------------------- ItemKNN
def _ref_cosine(x):
    gram = x.T @ x
    c = x.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        sim = gram / np.sqrt(np.outer(c, c))
    sim = np.nan_to_num(sim)
    np.fill_diagonal(sim, 0.0)
    return sim


@pytest.mark.parametrize("seed", [0, 1])
def test_itemknn_full_equals_dense_numpy(seed):
    x = _random_binary(seed)
    model = ItemKNN(block_size=5).fit(sp.csr_matrix(x))
    sim = _ref_cosine(x)
    np.testing.assert_allclose(model.similarity.toarray(), sim, rtol=1e-6, atol=1e-7)
    users = np.arange(x.shape[0])
    np.testing.assert_allclose(model.score(users).numpy(), x @ sim, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [1, 3])
def test_itemknn_pruned_equals_dense_numpy(k):
    x = _random_binary(2)
    sim = _ref_cosine(x)
    pruned = np.zeros_like(sim)
    for j in range(sim.shape[1]):
        cand = [i for i in range(sim.shape[0]) if sim[i, j] > 0]
        cand.sort(key=lambda i: (-sim[i, j], i))
        for i in cand[:k]:
            pruned[i, j] = sim[i, j]
    model = ItemKNN(k_neighbors=k, block_size=4).fit(sp.csr_matrix(x))
    np.testing.assert_allclose(model.similarity.toarray(), pruned, rtol=1e-6, atol=1e-7)
    assert (np.diff(sp.csc_matrix(model.similarity).indptr) <= k).all()
    np.testing.assert_allclose(model.score(np.arange(x.shape[0])).numpy(), x @ pruned, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- EASE
def _ref_ease(x, lam):
    g = x.T @ x + lam * np.eye(x.shape[1])
    p = np.linalg.inv(g)
    return np.eye(x.shape[1]) - p @ np.diag(1.0 / np.diag(p))


@pytest.mark.parametrize("lam", [1.0, 50.0])
def test_ease_equals_dense_numpy(lam):
    x = _random_binary(3)
    ref = _ref_ease(x, lam)
    assert np.allclose(np.diag(ref), 0.0)
    model = EASE(l2=lam).fit(sp.csr_matrix(x))
    np.testing.assert_allclose(model.weights, ref, rtol=1e-5, atol=1e-6)
    users = np.array([0, 5, 7])
    np.testing.assert_allclose(model.score(users).numpy(), x[users] @ ref, rtol=1e-4, atol=1e-6)


def test_ease_memory_guard_raises_before_allocating():
    n_items = 200_000
    x = sp.csr_matrix((np.ones(3), ([0, 1, 2], [5, 10, 199_999])), shape=(3, n_items))
    assert ease_memory_bytes(n_items) > 8e9
    with pytest.raises(EASEMemoryError, match=r"200000 items -> about \d+\.\d GB"):
        EASE(max_memory_gb=8.0).fit(x)
    with pytest.raises(EASEMemoryError, match=r"max_memory_gb auto: 90% of the .* GB"):
        fit_ease_grid(x, x, lambdas=(1.0,))
    with pytest.raises(EASEMemoryError):
        EASE(max_memory_gb=1e-6).fit(sp.csr_matrix(_random_binary(0)))


def test_ease_grid_picks_best_validation_lambda():
    rng = np.random.default_rng(4)
    x = (rng.random((80, 25)) < 0.3).astype(np.float32)
    val = ((rng.random((80, 25)) < 0.1) & (x == 0)).astype(np.float32)
    lambdas = (0.5, 20.0, 3000.0)
    best, history = fit_ease_grid(sp.csr_matrix(x), sp.csr_matrix(val), lambdas=lambdas)
    assert [h["lambda"] for h in history] == list(lambdas)
    ev = RankingEvaluator(sp.csr_matrix(x), sp.csr_matrix(val))
    scores = []
    for lam, row in zip(lambdas, history):
        metrics = ev.evaluate(EASE(l2=lam).fit(sp.csr_matrix(x)).score).metrics
        assert row["selection"] == pytest.approx(selection_score(metrics))
        scores.append(row["selection"])
    assert best.l2 == lambdas[int(np.argmax(scores))]


# ---------------------------------------------------------------- Multi-VAE
def _block_data(seed=0, n_blocks=4, users_per_block=50, items_per_block=20, per_user=8):
    """Users interact only inside their block; hold out one val and one test item each."""
    rng = np.random.default_rng(seed)
    n_users, n_items = n_blocks * users_per_block, n_blocks * items_per_block
    train = np.zeros((n_users, n_items), np.float32)
    val = np.zeros_like(train)
    test = np.zeros_like(train)
    for u in range(n_users):
        b = u // users_per_block
        # A popularity skew inside each block keeps the popularity baseline non-trivial.
        p = np.arange(items_per_block, 0, -1, dtype=float)
        items = b * items_per_block + rng.choice(items_per_block, per_user, replace=False, p=p / p.sum())
        train[u, items[:-2]] = 1
        val[u, items[-2]] = 1
        test[u, items[-1]] = 1
    return sp.csr_matrix(train), sp.csr_matrix(val), sp.csr_matrix(test)


VAE_ARGS = dict(epochs=25, patience=25, batch_size=50, hidden=64, latent=16, total_anneal_steps=200)


def test_multivae_learns_blocks_and_beats_popularity():
    train, val, test = _block_data()
    rng_state = torch.get_rng_state()
    res = train_multivae(train, val, seed=0, **VAE_ARGS)
    assert torch.equal(torch.get_rng_state(), rng_state)  # global RNG untouched
    losses = [h["loss"] for h in res.history]
    assert len(losses) == 25
    assert np.mean(losses[-3:]) < 0.9 * losses[0]
    assert res.best_epoch == int(np.argmax([h["selection"] for h in res.history]))
    vae_test = evaluate_scores(res.score, train, test, ks_recall=(5, 20, 40)).metrics
    pop_test = evaluate_scores(Popularity().fit(train).score, train, test, ks_recall=(5, 20, 40)).metrics
    assert vae_test["Recall@5"] > pop_test["Recall@5"] + 0.1
    assert vae_test["NDCG@100"] > pop_test["NDCG@100"]
    # Best weights are loaded: re-evaluating validation reproduces the best epoch's score.
    val_metrics = evaluate_scores(res.score, train, val).metrics
    assert selection_score(val_metrics) == pytest.approx(res.best_score)


def test_multivae_same_seed_is_repeatable():
    train, val, _ = _block_data(seed=1, users_per_block=20)
    args = dict(VAE_ARGS, epochs=4, patience=4)
    a = train_multivae(train, val, seed=7, **args)
    b = train_multivae(train, val, seed=7, **args)
    c = train_multivae(train, val, seed=8, **args)
    assert a.history == b.history
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key])
    assert any(not torch.equal(v, c.model.state_dict()[k]) for k, v in a.model.state_dict().items())


def test_multivae_early_stopping_respects_patience():
    train, val, _ = _block_data(seed=2, users_per_block=10)
    res = train_multivae(train, val, seed=0, **dict(VAE_ARGS, epochs=60, patience=2, hidden=16, latent=4))
    # This seed stops early: two epochs after the best one without a gain.
    assert len(res.history) < 60
    assert len(res.history) - 1 - res.best_epoch == 2


def test_multivae_sparse_batches_equal_dense_batches():
    """The sparse input path (embedding-bag over the nonzeros) is the dense one: same logits,
    same loss and the same generator state after a training-mode forward."""
    from llm4rec.baselines.multivae import MultiVAE, multivae_loss, sparse_rows

    x = sp.csr_matrix(_random_binary(3, n_users=30, n_items=25, density=0.3))
    users = np.array([5, 0, 17, 2, 29])
    dense = torch.from_numpy(x[users].toarray().astype(np.float32))
    model = MultiVAE(25, hidden=12, latent=6, dropout=0.5, generator=torch.Generator().manual_seed(1))
    for training in (True, False):
        model.train(training)
        g_dense, g_sparse = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        out_d = model(dense, generator=g_dense)
        batch = sparse_rows(x, users)
        out_s = model(batch, generator=g_sparse)
        for a, b in zip(out_d, out_s):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            multivae_loss(*out_d[:1], dense, *out_d[1:], beta=0.2),
            multivae_loss(*out_s[:1], batch, *out_s[1:], beta=0.2),
            rtol=1e-5,
            atol=1e-6,
        )
        assert torch.equal(g_dense.get_state(), g_sparse.get_state())
        rebuilt = torch.zeros(batch.shape, dtype=batch.val.dtype)
        rebuilt[batch.row, batch.col] = batch.val
        np.testing.assert_array_equal(rebuilt.numpy(), dense.numpy())


def test_multivae_eval_every_keeps_the_trajectory_and_counts_patience_in_epochs():
    """Validation neither draws random numbers nor changes the weights: validating every k
    epochs sees the same models as validating every epoch, at epochs k-1, 2k-1, ... and the
    last; patience counts epochs since the best validated one."""
    train, val, _ = _block_data(seed=1, users_per_block=10)
    args = dict(VAE_ARGS, hidden=16, latent=4, lr=0.01)  # this seed plateaus after epoch 1
    every = train_multivae(train, val, seed=3, **dict(args, epochs=11, patience=11))
    assert [h["epoch"] for h in every.history] == list(range(11))
    by_epoch = {h["epoch"]: h for h in every.history}
    third = train_multivae(train, val, seed=3, eval_every=3, **dict(args, epochs=11, patience=11))
    assert [h["epoch"] for h in third.history] == [2, 5, 8, 10]
    assert third.history == [by_epoch[e] for e in (2, 5, 8, 10)]
    assert third.epochs_run == 11
    best = max(third.history, key=lambda h: h["selection"])["epoch"]
    assert third.best_epoch == best

    # Stopping: the first validated epoch at least `patience` epochs after the best one so far.
    stops = []
    for patience in (2, 4):
        res = train_multivae(train, val, seed=3, eval_every=2, **dict(args, epochs=11, patience=patience))
        seen, best_e, best_s = [], -1, -np.inf
        for e in [1, 3, 5, 7, 9, 10]:
            seen.append(e)
            if by_epoch[e]["selection"] > best_s:
                best_e, best_s = e, by_epoch[e]["selection"]
            if e - best_e >= patience:
                break
        assert [h["epoch"] for h in res.history] == seen
        assert res.epochs_run == seen[-1] + 1 and res.best_epoch == best_e
        stops.append(res.epochs_run)
    assert min(stops) < 11  # this seed does stop early


def test_library_ease_grid_is_the_config_default():
    """The workflow passes config.yaml's grid; the library's default for direct use is the same."""
    import yaml

    from llm4rec.baselines.ease import EASE_LAMBDAS

    config = yaml.safe_load((Path(__file__).parents[2] / "config.yaml").read_text())
    assert tuple(float(x) for x in config["baselines"]["ease"]["lambdas"]) == EASE_LAMBDAS


def _meminfo(tmp_path: Path, available_kb: int) -> Path:
    p = tmp_path / "meminfo"
    p.write_text(f"MemTotal:       25165824 kB\nMemFree:         1000000 kB\nMemAvailable:   {available_kb} kB\n")
    return p


def test_ease_default_limit_follows_the_machine_and_the_slurm_job(tmp_path):
    """The Amazon category of 18,357 items (8.1 GB) on a 24 GB machine with 21 GB available:
    the default (auto) admits EASE; a SLURM job of 6 GB, or a container of 4 GB, does not."""
    from llm4rec.core.memory import ease_limit_gb, ease_need_gb

    meminfo = _meminfo(tmp_path, 21_000_000)
    no_cgroup = tmp_path / "no-cgroup"
    need = ease_need_gb(18_357)
    assert 8.0 < need < 8.2
    limit, why = ease_limit_gb("auto", meminfo=meminfo, cgroup=no_cgroup, env={})
    assert limit == pytest.approx(0.9 * 21_000_000 * 1024 / 1e9) and need < limit
    assert why == "max_memory_gb auto: 90% of the available memory of this machine: 21.5 GB"
    limit, why = ease_limit_gb("auto", meminfo=meminfo, cgroup=no_cgroup, env={"SLURM_MEM_PER_NODE": "6000"})
    assert limit == pytest.approx(5.4) and "memory of this SLURM job: 6.0 GB" in why
    env = {"SLURM_MEM_PER_CPU": "4000", "SLURM_CPUS_ON_NODE": "4"}
    assert ease_limit_gb("auto", meminfo=meminfo, cgroup=no_cgroup, env=env)[0] == pytest.approx(14.4)
    cgroup = tmp_path / "memory.max"
    cgroup.write_text("4000000000\n")
    assert "container" in ease_limit_gb("auto", meminfo=meminfo, cgroup=cgroup, env={})[1]
    cgroup.write_text("max\n")
    assert ease_limit_gb("auto", meminfo=meminfo, cgroup=cgroup, env={})[0] == pytest.approx(0.9 * 21.504)
    assert ease_limit_gb(8, meminfo=meminfo)[0] == 8.0


@pytest.mark.slow
def test_ease_over_its_memory_is_refused_when_the_workflow_starts(demo_data, tmp_path):
    """With the dataset preprocessed, a limit EASE cannot meet stops `snakemake` before any
    job runs (before: popularity ran, then EASE failed in its log)."""
    import shutil

    from conftest import copy_checkout, snakemake

    work = copy_checkout(tmp_path / "work")
    shutil.copytree(demo_data / "processed", work / "results/demo/processed")
    (work / "small.yaml").write_text("baselines: {run: [popularity, ease], ease: {max_memory_gb: 0.001}}\n")
    targets = [f"results/demo/baselines/{name}/metrics.json" for name in ("popularity", "ease")]
    proc = snakemake(work, *targets, "--cores", "1", "--configfile", "small.yaml", check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert (
        "config: baselines.ease.max_memory_gb: EASE needs about 0.00137 GB for the 239 items of "
        "results/demo/processed/stats.json, over its limit of 0.001 GB (max_memory_gb 0.001)"
    ) in text, text[-3000:]
    assert not (work / "results/demo/baselines/popularity").exists()
    assert "Finished job" not in text
