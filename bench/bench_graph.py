"""Benchmark RelationIndex (issue 3): build time, peak RSS, 1M item-pair relations.

Each size runs in its own subprocess, so peak RSS (``ru_maxrss``) is per size; the graph is
generated in the parent and handed over as a .npz file, so the child's peak is loading plus
building plus querying (plus the interpreter and libraries, about 0.1 GB).

    .venv/bin/python bench/bench_graph.py                      # all sizes
    .venv/bin/python bench/bench_graph.py --sizes beauty dense3000

Sizes: ``beauty`` (22,000 users, 12,000 items, ~150,000 train edges, power-law synthetic),
``beauty_demo`` (``llm4rec.data.demo`` Beauty-sized data through the real preprocess, if present),
``beauty10`` (10x beauty), ``dense3000`` (about 3,000 nodes: the seed's dense build against
RelationIndex build plus one epoch of second-order prompt queries, in the same process),
``smalldiam`` (9,000 nodes, uniform random, diameter below 6: the exact all-source D6 path).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SIZES = {
    "beauty": dict(n_users=22_000, n_items=12_000, n_edges=150_000),
    "beauty10": dict(n_users=220_000, n_items=120_000, n_edges=1_500_000),
    "dense3000": dict(n_users=1_800, n_items=1_200, n_edges=12_000),
    "smalldiam": dict(n_users=6_000, n_items=3_000, n_edges=120_000),
}


def uniform_graph(n_users: int, n_items: int, n_edges: int, seed: int = 0) -> sp.csr_matrix:
    """Uniform random edges: a connected graph of diameter below 6, so D6 needs the exact
    all-source BFS (the path small dense graphs such as Magazine with val/test edges take)."""
    rng = np.random.default_rng(seed)
    m = sp.csr_matrix(
        (np.ones(n_edges, dtype=np.int8), (rng.integers(0, n_users, n_edges), rng.integers(0, n_items, n_edges))),
        shape=(n_users, n_items),
    )
    m.sum_duplicates()
    m.data[:] = 1
    return m


def power_law_graph(n_users: int, n_items: int, n_edges: int, seed: int = 0) -> tuple[sp.csr_matrix, pd.DataFrame]:
    """Users with heavy-tailed activity (at least 3 edges), items with Pareto popularity (and
    two random users each), 70% of a user's draws inside a home cluster of 60 items: hubs, long
    tails and locality. The edge count lands within a few percent of ``n_edges``.
    Also returns item metadata (brand, categories) for second-order groups."""
    rng = np.random.default_rng(seed)
    n_clusters = max(1, n_items // 60)
    cluster = np.sort(rng.integers(0, n_clusters, n_items))
    pop = rng.pareto(1.2, n_items) + 1.0
    act = rng.pareto(1.5, n_users) + 1.0
    deg = np.maximum(3, np.round(act / act.sum() * n_edges * 1.045)).astype(np.int64)
    users = np.repeat(np.arange(n_users), deg)
    home = rng.integers(0, n_clusters, n_users)[users]
    # global popularity draw
    cum = np.cumsum(pop)
    glob = np.searchsorted(cum, rng.random(len(users)) * cum[-1], side="right")
    # within-cluster popularity draw
    start = np.searchsorted(cluster, np.arange(n_clusters))
    end = np.searchsorted(cluster, np.arange(n_clusters), side="right")
    base = np.where(start > 0, cum[np.maximum(start - 1, 0)], 0.0)
    span = np.where(end > start, cum[np.maximum(end - 1, 0)] - base, 0.0)
    local = np.searchsorted(cum, base[home] + rng.random(len(users)) * span[home], side="right")
    use_local = (rng.random(len(users)) < 0.7) & (end[home] > start[home])
    items = np.minimum(np.where(use_local, local, glob), n_items - 1)
    # every item gets two random users, as a k-core would give it some
    users = np.concatenate([users, rng.integers(0, n_users, 2 * n_items)])
    items = np.concatenate([items, np.repeat(np.arange(n_items), 2)])
    m = sp.csr_matrix((np.ones(len(users), dtype=np.int8), (users, items)), shape=(n_users, n_items))
    m.sum_duplicates()
    m.data[:] = 1
    # 8 brands at home in each cluster; 20% of items take any brand
    n_brands = 8 * n_clusters
    home_brand = cluster * 8 + rng.integers(0, 8, n_items)
    brand = np.where(rng.random(n_items) < 0.8, home_brand, rng.integers(0, n_brands, n_items))
    top = cluster % 7
    meta = pd.DataFrame(
        {
            "iid": np.arange(n_items),
            "brand": [f"Brand {b}" for b in brand],
            "categories": [["Beauty", f"Top {t}", f"Leaf {c}"] for t, c in zip(top, cluster)],
        }
    )
    return m, meta


def demo_train_matrix() -> sp.csr_matrix:
    """The train split of Beauty-sized generated data (the demo generator through the real
    preprocess) as a users x items CSR matrix."""
    from llm4rec.data.demo import beauty_sized, processed_interactions
    from llm4rec.data.preprocess import interaction_matrix

    out = processed_interactions(beauty_sized(1))
    return interaction_matrix(out["interactions"], out["stats"]["users"], out["stats"]["items"])


def _peak_rss_gb() -> float:
    """This process's own peak RSS: VmHWM (per address space, reset at exec). ``ru_maxrss``
    would carry the parent's peak over fork + exec on Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def run_one(size: str, data: Path, work: Path) -> dict:
    from llm4rec.graph.relation import RelationIndex, graph_stats

    with np.load(data, allow_pickle=False) as z:
        csr = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
    res: dict = {"size": size, "users": csr.shape[0], "items": csr.shape[1], "edges": int(csr.nnz)}
    t = time.perf_counter()
    idx = RelationIndex(csr)
    res["build_s"] = time.perf_counter() - t
    res.update(d6=idx.d6, hubs=int(len(idx._hubs)), c_nnz=int(idx._c.nnz), diameter=idx.diameter_info)
    t = time.perf_counter()
    idx.save(work)
    res["save_s"] = time.perf_counter() - t
    res["artifact_mb"] = sum(p.stat().st_size for p in work.iterdir()) / 1e6
    t = time.perf_counter()
    idx = RelationIndex.load(work)
    res["load_s"] = time.perf_counter() - t
    rng = np.random.default_rng(1)
    u, n_items = idx.n_users, idx.n_items
    a = rng.integers(0, n_items, 1_000_000) + u
    b = rng.integers(0, n_items, 1_000_000) + u
    t = time.perf_counter()
    rel = idx.relation(a, b)
    res["relation_1M_item_pairs_s"] = time.perf_counter() - t
    res["relation_checksum"] = float(rel.astype(np.float64).sum())
    t = time.perf_counter()
    stats = graph_stats(idx, 100_000, seed=98765)
    res["stats_100k_s"] = time.perf_counter() - t
    res["item_pair_hops"] = stats["item_pair_hops"]["histogram"]
    n_ui = 100_000
    t = time.perf_counter()
    idx.relation(rng.integers(0, u, n_ui), rng.integers(u, u + n_items, n_ui))
    res["relation_100k_user_item_s"] = time.perf_counter() - t
    res["peak_rss_gb"] = _peak_rss_gb()
    return res


def run_dense(data: Path, meta_path: Path) -> dict:
    """Seed dense build (Floyd-Warshall + two min-max) vs RelationIndex + one epoch of
    second-order queries (every ordered item pair, self included, of every prompt)."""
    from scipy.sparse import csgraph

    from llm4rec.graph.relation import RelationIndex
    from llm4rec.graph.second_order import build_second_order

    with np.load(data, allow_pickle=False) as z:
        csr = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
    meta = pd.read_parquet(meta_path)
    n_u, n_i = csr.shape
    n = n_u + n_i
    res: dict = {"size": "dense3000", "users": n_u, "items": n_i, "nodes": n, "edges": int(csr.nnz)}

    def minmax(x):
        return (x - x.min()) / (x.max() - x.min())

    t = time.perf_counter()
    adj = np.zeros((n, n))
    adj[:n_u, n_u:] = csr.toarray()
    adj[n_u:, :n_u] = adj[:n_u, n_u:].T
    dist = csgraph.floyd_warshall(adj, directed=False, unweighted=True)
    dense_r = minmax(adj + minmax(np.maximum(6 - dist, 0)))
    res["seed_dense_floyd_warshall_s"] = time.perf_counter() - t

    t = time.perf_counter()
    dist_bfs = csgraph.shortest_path(adj, directed=False, unweighted=True)
    minmax(adj + minmax(np.maximum(6 - dist_bfs, 0)))
    res["dense_bfs_s"] = time.perf_counter() - t
    del dist, dist_bfs

    groups = build_second_order(meta)
    sizes = groups["item_ids"].map(len).to_numpy()
    flat = np.concatenate(groups["item_ids"].to_numpy()).astype(np.int64) + n_u
    row_start = np.cumsum(sizes) - sizes
    # all ordered pairs inside each prompt, self pairs included, grouped by prompt size
    pa_list, pb_list = [], []
    for k in np.unique(sizes):
        rows = np.flatnonzero(sizes == k)
        mat = flat[row_start[rows][:, None] + np.arange(k)]
        pa_list.append(np.repeat(mat, k, axis=1).ravel())
        pb_list.append(np.tile(mat, (1, k)).ravel())
    qa, qb = np.concatenate(pa_list), np.concatenate(pb_list)
    res["second_order_prompts"] = int(len(groups))
    res["second_order_pairs"] = int(len(qa))

    t = time.perf_counter()
    idx = RelationIndex(csr)
    res["index_build_s"] = time.perf_counter() - t
    t = time.perf_counter()
    rel = idx.relation(qa, qb)
    res["index_queries_s"] = time.perf_counter() - t
    res["max_abs_diff_vs_dense"] = float(np.abs(rel - dense_r[qa, qb]).max())
    a = np.random.default_rng(2).integers(0, n, (2, 200_000))
    res["max_abs_diff_random_pairs"] = float(np.abs(idx.relation(a[0], a[1]) - dense_r[a[0], a[1]]).max())
    index_s = res["index_build_s"] + res["index_queries_s"]
    res["ratio_seed_fw_over_index"] = res["seed_dense_floyd_warshall_s"] / index_s
    res["ratio_dense_bfs_over_index"] = res["dense_bfs_s"] / index_s
    res["d6"] = idx.d6
    res["peak_rss_gb"] = _peak_rss_gb()
    return res


def _save_csr(m: sp.csr_matrix, path: Path) -> None:
    np.savez(path, data=m.data, indices=m.indices, indptr=m.indptr, shape=np.array(m.shape))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["beauty", "beauty_demo", "beauty10", "dense3000", "smalldiam"])
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--meta", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help="append JSON lines here")
    args = ap.parse_args()
    if args.one:
        res = (
            run_dense(Path(args.data), Path(args.meta))
            if args.one == "dense3000"
            else run_one(args.one, Path(args.data), Path(args.work))
        )
        print(json.dumps(res))
        return
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}", file=sys.stderr)
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            tmp_p = Path(tmp)
            data, meta_path = tmp_p / "train.npz", tmp_p / "items.parquet"
            t = time.perf_counter()
            if size == "beauty_demo":
                try:
                    m = demo_train_matrix()
                except Exception as exc:  # the demo module is optional here
                    print(json.dumps({"size": size, "skipped": repr(exc)}))
                    continue
                m = sp.csr_matrix(m)
            elif size == "smalldiam":
                m = uniform_graph(**SIZES[size])
            else:
                m, meta = power_law_graph(**SIZES[size])
                meta.to_parquet(meta_path)
            gen_s = time.perf_counter() - t
            _save_csr(m, data)
            del m
            cmd = [
                sys.executable,
                __file__,
                "--one",
                size,
                "--data",
                str(data),
                "--meta",
                str(meta_path),
                "--work",
                str(tmp_p / "graph"),
            ]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            res["generate_s"] = gen_s
            line = json.dumps(res)
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
