"""Sparse-matrix and breadth-first-search helpers behind the relation index: row
intersections in bounded chunks, bit-set BFS, eccentricity and diameter estimates."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph

FAR = 6  # the seed's horizon: max(6 - d, 0) is 0 from 6 hops on
CHUNK_ENTRIES = 20_000_000  # sparse entries gathered per row-intersection chunk
BFS_BYTES = 128 * 2**20  # gathered bit words per BFS level


def binary_pattern(m: sp.spmatrix | sp.sparray, shape: tuple[int, int] | None = None) -> sp.csr_matrix:
    """Canonical 0/1 CSR (duplicates summed, zeros dropped, sorted indices, int8 ones)."""
    c = sp.csr_matrix(m, shape=shape, copy=True)
    c.sum_duplicates()
    c.eliminate_zeros()
    c.sort_indices()
    return sp.csr_matrix((np.ones(c.nnz, dtype=np.int8), c.indices, c.indptr), shape=c.shape)


def csr_contains(m: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Vectorized ``m[rows, cols] != 0`` by binary search inside each sorted row."""
    out = np.zeros(len(rows), dtype=bool)
    if len(rows) == 0 or m.nnz == 0:
        return out
    lo = m.indptr[rows].astype(np.int64)
    end = m.indptr[rows + 1].astype(np.int64)
    hi = end.copy()
    last = m.nnz - 1
    active = lo < hi
    while active.any():
        mid = (lo + hi) >> 1
        less = m.indices[np.minimum(mid, last)] < cols
        lo = np.where(active & less, mid + 1, lo)
        hi = np.where(active & ~less, mid, hi)
        active = lo < hi
    hit = lo < end
    out[hit] = m.indices[lo[hit]] == cols[hit]
    return out


def chunks_by_cost(cost: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Split ``range(len(cost))`` into consecutive chunks whose summed cost stays near ``budget``."""
    n = len(cost)
    if n == 0:
        return []
    cum = np.cumsum(cost, dtype=np.int64)
    bounds = [0]
    while bounds[-1] < n:
        base = cum[bounds[-1] - 1] if bounds[-1] > 0 else 0
        nxt = int(np.searchsorted(cum, base + budget, side="right"))
        bounds.append(max(nxt, bounds[-1] + 1))
    bounds[-1] = n
    return list(zip(bounds[:-1], bounds[1:]))


def rows_intersect(x: sp.csr_matrix, rx: np.ndarray, y: sp.csr_matrix, ry: np.ndarray) -> np.ndarray:
    """Whether row ``rx[t]`` of ``x`` and row ``ry[t]`` of ``y`` share a column, for every t."""
    out = np.zeros(len(rx), dtype=bool)
    cost = np.diff(x.indptr)[rx] + np.diff(y.indptr)[ry] + 1
    for s, e in chunks_by_cost(cost, CHUNK_ENTRIES):
        prod = x[rx[s:e]].multiply(y[ry[s:e]]).tocsr()
        out[s:e] = np.diff(prod.indptr) > 0
    return out


def expand_rows(m: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner position, column) for every stored entry of ``m[rows]``, without a Python loop."""
    starts = m.indptr[rows].astype(np.int64)
    lens = (m.indptr[rows + 1] - m.indptr[rows]).astype(np.int64)
    owner = np.repeat(np.arange(len(rows)), lens)
    offsets = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
    return owner, m.indices[np.repeat(starts, lens) + offsets]


def any_by_owner(owner: np.ndarray, flags: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(owner[flags], minlength=n) > 0


def bfs_levels(adj: sp.csr_matrix, sources: np.ndarray, depth: int):
    """Yield ``(level, visited)`` for levels 0..depth; ``visited[v]`` holds one bit per source.

    Bit ``k`` (word ``k >> 6``, bit ``k & 63``) of ``visited[v]`` is set when ``v`` is within
    ``level`` hops of ``sources[k]``. Cost per level: one gather of ``nnz(adj)`` rows of words.
    """
    n = adj.shape[0]
    words = (len(sources) + 63) // 64
    visited = np.zeros((n, words), dtype=np.uint64)
    k = np.arange(len(sources))
    visited[sources, k >> 6] = np.left_shift(np.uint64(1), (k & 63).astype(np.uint64))
    yield 0, visited
    deg = np.diff(adj.indptr)
    has = deg > 0
    starts = adj.indptr[:-1][has]
    for level in range(1, depth + 1):
        if adj.nnz:
            gathered = visited[adj.indices]
            visited[has] |= np.bitwise_or.reduceat(gathered, starts, axis=0)
            del gathered
        yield level, visited


def bfs_source_chunk(adj: sp.csr_matrix) -> int:
    words = max(1, min(64, BFS_BYTES // max(1, 8 * adj.nnz)))
    return 64 * words


def bit_of(visited: np.ndarray, nodes: np.ndarray, slots: np.ndarray) -> np.ndarray:
    word = visited[nodes, slots >> 6]
    return ((word >> (slots & 63).astype(np.uint64)) & np.uint64(1)).astype(bool)


def bfs_pair_distance(adj: sp.csr_matrix, a: np.ndarray, b: np.ndarray, limit: int) -> np.ndarray:
    """Exact ``min(d(a, b), limit + 1)`` by bit-parallel BFS from the distinct sources in ``a``."""
    out = np.full(len(a), limit + 1, dtype=np.int16)
    if len(a) == 0:
        return out
    src, slot_of_pair = np.unique(a, return_inverse=True)
    step = bfs_source_chunk(adj)
    order = np.argsort(slot_of_pair, kind="stable")
    bounds = np.searchsorted(slot_of_pair[order], np.arange(0, len(src) + step, step))
    for c, s0 in enumerate(range(0, len(src), step)):
        pairs = order[bounds[c] : bounds[c + 1]]
        slots = slot_of_pair[pairs] - s0
        todo = np.ones(len(pairs), dtype=bool)
        for level, visited in bfs_levels(adj, src[s0 : s0 + step], limit):
            idx = np.flatnonzero(todo)
            if len(idx) == 0:
                break
            hit = bit_of(visited, b[pairs[idx]], slots[idx])
            out[pairs[idx[hit]]] = level
            todo[idx[hit]] = False
    return out


def _eccentricity(adj: sp.csr_matrix, source: int) -> tuple[float, int]:
    """Eccentricity of ``source`` (inf if some node is unreachable) and a farthest node."""
    dist = csgraph.dijkstra(adj, directed=False, indices=source, unweighted=True)
    far = int(np.argmax(dist))
    return float(dist[far]), far


def estimate_diameter(adj: sp.csr_matrix) -> dict:
    """``D6`` plus how it was found: components, double sweep, exact all-source BFS if needed."""
    n = adj.shape[0]
    n_comp = int(csgraph.connected_components(adj, directed=False)[0]) if n else 0
    if n_comp != 1:
        return {
            "d6": FAR,
            "components": n_comp,
            "diameter_lower_bound": None,
            "diameter": None,
            "method": "disconnected",
        }
    deg = np.diff(adj.indptr)
    lb, node = 0.0, int(np.argmax(deg))
    for _ in range(4):  # repeated double sweep: cheap, usually tight
        ecc, far = _eccentricity(adj, node)
        if ecc <= lb:
            break
        lb, node = ecc, far
    lb_i = int(lb)
    if lb_i >= FAR:
        return {"d6": FAR, "components": 1, "diameter_lower_bound": lb_i, "diameter": None, "method": "double_sweep"}
    # Exact: every source's ball must cover the graph within 5 hops, else D6 = 6.
    step = bfs_source_chunk(adj)
    diameter = 0
    for s0 in range(0, n, step):
        src = np.arange(s0, min(n, s0 + step))
        full_words = np.full((len(src) + 63) // 64, np.uint64(0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
        tail = len(src) % 64
        if tail:
            full_words[-1] = np.uint64((1 << tail) - 1)
        for level, visited in bfs_levels(adj, src, FAR - 1):
            if np.array_equal(np.bitwise_and.reduce(visited, axis=0), full_words):
                diameter = max(diameter, level)
                break
        else:
            return {
                "d6": FAR,
                "components": 1,
                "diameter_lower_bound": lb_i,
                "diameter": None,
                "method": "all_source_bfs",
            }
    return {
        "d6": min(FAR, diameter),
        "components": 1,
        "diameter_lower_bound": lb_i,
        "diameter": diameter,
        "method": "all_source_bfs",
    }
