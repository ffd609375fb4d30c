"""Benchmark the edge-bias build (issue 4) against the seed's per-element triple loop.

For one batch of 32 second-order prompts (distances 2, 4 and >= 6 hops) and one of 32
fine-tuning prompts, it times building R with `llm4rec.model.collate.edge_bias_matrix` (and the
whole collator) against the seed's loop `for b, i, j: R[b,i,j] = relation(node_i, node_j)`
over the same `RelationIndex`, checks the values are identical, and prints the ratios.

    .venv/bin/python bench/bench_bias.py
    .venv/bin/python bench/bench_bias.py --users 5000 --items 3000 --edges 40000 --repeats 20

The graph is a power-law synthetic bipartite graph (popularity-weighted item draws).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from llm4rec.graph.relation import RelationIndex  # noqa: E402
from llm4rec.model.collate import EdgeAwareCollator, edge_bias_matrix  # noqa: E402
from llm4rec.model.encoding import build_content_examples, build_finetune_examples  # noqa: E402
from llm4rec.model.tokenization import EntityVocab, load_tokenizer, train_bpe_tokenizer  # noqa: E402


def power_law_graph(n_users: int, n_items: int, n_edges: int, seed: int = 0) -> sp.csr_matrix:
    """Users with >= 3 items, items drawn by a Zipf-like popularity."""
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.8
    pop /= pop.sum()
    deg = np.maximum(3, rng.zipf(2.0, n_users))
    deg = np.minimum(deg, 200)
    deg = np.maximum(3, (deg * (n_edges / deg.sum())).astype(int))
    rows = np.repeat(np.arange(n_users), deg)
    cols = rng.choice(n_items, size=len(rows), p=pop)
    m = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_users, n_items))
    m.data[:] = 1.0
    return m


def second_order_groups(m: sp.csr_matrix, n: int, size: int, seed: int = 0) -> list[list[int]]:
    """Groups mixing items 2 hops, 4 hops and far from an anchor, so distances vary."""
    rng = np.random.default_rng(seed)
    c = (m.T @ m).tocsr()
    c.data[:] = 1
    c2 = (c @ c).tocsr()
    groups = []
    for _ in range(n):
        a = int(rng.integers(m.shape[1]))
        near = c.indices[c.indptr[a] : c.indptr[a + 1]]
        mid = np.setdiff1d(c2.indices[c2.indptr[a] : c2.indptr[a + 1]], near)
        k = size // 4
        pick = [a]
        pick += list(rng.choice(near, size=min(k, len(near)), replace=False)) if len(near) else []
        pick += list(rng.choice(mid, size=min(k, len(mid)), replace=False)) if len(mid) else []
        rest = np.setdiff1d(np.arange(m.shape[1]), pick)
        pick += list(rng.choice(rest, size=size - len(pick), replace=False))
        groups.append(sorted(set(int(x) for x in pick)))
    return groups


def triple_loop(nodes: np.ndarray, index: RelationIndex) -> np.ndarray:
    """The seed's bias: one relation lookup per (example, i, j) entity pair."""
    B, L = nodes.shape
    out = np.zeros((B, L, L), dtype=np.float32)
    for b in range(B):
        for i in range(L):
            for j in range(L):
                if nodes[b, i] >= 0 and nodes[b, j] >= 0:
                    out[b, i, j] = index.relation(np.array([nodes[b, i]]), np.array([nodes[b, j]]))[0]
    return out


def bench_batch(name: str, examples: list[dict], ev: EntityVocab, index: RelationIndex, repeats: int) -> dict:
    col = EdgeAwareCollator(ev, index, "seed")
    batch = col(examples)
    nodes, kinds = batch["node_ids"], batch["kinds"]
    fast = edge_bias_matrix(nodes, kinds, ev, index, "seed")
    t_fast, t_coll = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        edge_bias_matrix(nodes, kinds, ev, index, "seed")
        t_fast.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        col(examples)
        t_coll.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    ref = triple_loop(nodes.numpy(), index)
    t_ref = time.perf_counter() - t0
    ent = nodes >= 0
    n_pairs = int((ent[:, :, None] & ent[:, None, :]).sum())
    hops = None
    if name == "second_order":
        a, b = np.nonzero(ent.numpy())
        h = []
        for r in range(nodes.shape[0]):
            nn = nodes[r][nodes[r] >= 0].numpy()
            aa, bb = np.meshgrid(nn, nn)
            h.append(index.hops(aa.ravel(), bb.ravel()))
        vals, counts = np.unique(np.concatenate(h), return_counts=True)
        hops = {int(v): int(c) for v, c in zip(vals, counts)}
    return {
        "batch": name,
        "B": int(nodes.shape[0]),
        "L": int(nodes.shape[1]),
        "entity_pairs": n_pairs,
        "pair_hops": hops,
        "identical": bool(np.array_equal(fast.numpy(), ref)),
        "seed_loop_s": t_ref,
        "bias_median_s": float(np.median(t_fast)),
        "collate_median_s": float(np.median(t_coll)),
        "speedup_bias": t_ref / float(np.median(t_fast)),
        "speedup_collate": t_ref / float(np.median(t_coll)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--edges", type=int, default=40000)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    m = power_law_graph(args.users, args.items, args.edges)
    t0 = time.perf_counter()
    index = RelationIndex(m, max_hops=5)
    t_index = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        corpus = [
            "These items have the same brand: Acme Home and Kitchen, user has interacted with, will interact with"
        ] * 50
        train_bpe_tokenizer(iter(corpus), d, vocab_size=500, min_frequency=1)
        tok = load_tokenizer(d)
    ev = EntityVocab(len(tok), m.shape[0], m.shape[1])
    groups = second_order_groups(m, 32, 32)
    so = pd.DataFrame({"kind": ["brand"] * 32, "value": ["Acme Home and Kitchen"] * 32, "item_ids": groups})
    empty = pd.DataFrame({"uid": [], "iid": [], "split": [], "review_text": []})
    so_ex = build_content_examples(pd.DataFrame({"iid": []}), empty, so, tok, ev, 1024)
    train = [np.flatnonzero(r) for r in m[:32].toarray()]
    ft_ex = build_finetune_examples(train, tok, ev, 1024, seed=0, epoch=0, hide_frac=0.2)

    results = {
        "machine": f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__}, "
        f"threads={args.threads}",
        "graph": {
            "users": m.shape[0],
            "items": m.shape[1],
            "edges": int(m.nnz),
            "d6": index.d6,
            "index_build_s": t_index,
        },
        "runs": [
            bench_batch("second_order", [so_ex[n] for n in range(len(so_ex))], ev, index, args.repeats),
            bench_batch("finetune", [ft_ex[n] for n in range(len(ft_ex))], ev, index, args.repeats),
        ],
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
