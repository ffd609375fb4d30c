"""Edge information of the user-item graph without the dense all-pairs matrix.

The seed code ran Floyd-Warshall over the dense (U+I)^2 adjacency ``A`` (distance ``d``, 0 on
the diagonal, inf when unreachable) and used ``R = minmax(A + minmax(max(6 - d, 0)))``. Every
value of ``R`` depends only on ``d`` and on ``D6 = min(6, diameter)`` (6 when disconnected), so
``RelationIndex`` answers exact hop distances for the pairs a batch needs from sparse structures
and maps them through the closed form (docs/method.md 3.3).

Closed form, with ``m = 6 - D6`` and ``D6 >= 1``: the inner min-max has max 6 (the diagonal) and
min ``m`` (the farthest pair), so it is ``(max(6-d, 0) - m) / D6``; the outer one has min 0 (the
farthest pair, not an edge, once ``D6 >= 2``) and max ``1 + (5-m)/D6`` (an edge) or 1 (the
diagonal) when the graph has no edge at all. Degenerate graphs:

* no edges: ``R`` is 1 on the diagonal and 0 elsewhere (what the seed computes);
* one user, one item, one edge (``D6 = 1``): every seed value is 1, so both min-max steps divide
  0 by 0 and the seed yields NaN; we return the closed form's limit, 1 for every pair;
* a graph with a single node has no pairs and is refused (``n_users`` and ``n_items`` >= 1).

Distances (nodes: users ``0..U-1``, items ``U..U+I-1``; the graph is bipartite, so user-user
and item-item distances are even, user-item odd). With ``B`` the users x items 0/1 matrix and
``C = B^T B > 0`` (items within two hops, the item itself included when it has a user):

* item-item: ``d = 2`` iff ``j`` is in row ``i`` of ``C``; ``d <= 4`` iff rows ``i`` and ``j`` of
  ``C`` intersect. "Hub" items (rows of ``C`` longer than ``hub_threshold``, longest first,
  capped by count and memory) get their 4-hop ball precomputed as bits by bit-parallel BFS, so a
  query is one bit lookup or a merge of two short rows.
* user-item: ``d = 1`` iff ``B[u, i]``; ``d <= 3`` iff ``B[u]`` meets ``C[i]``; ``d <= 5`` iff some
  item of ``u`` is within 4 hops of ``i`` (the item-item test on the expanded pairs).
* user-user: ``d = 2`` iff ``B[u]`` meets ``B[v]``; ``d <= 4`` iff some item of ``u`` is within 3
  hops of ``v``.
* farther than 5 (only when ``max_hops > 5``): bit-parallel BFS from the distinct sources.

All of it is vectorized over the query arrays (loops run over chunks and BFS levels only).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse import csgraph

from .preprocess import interaction_matrix

__all__ = [
    "EXACT_HOPS",
    "RelationIndex",
    "build_relation_index",
    "graph_stats",
    "relation_from_hops",
    "relation_lut",
    "relation_table",
]

FORMAT_VERSION = 1
FAR = 6  # the seed's horizon: max(6 - d, 0) is 0 from 6 hops on
EXACT_HOPS = 5  # the seed's relation tells hop distances apart up to 5 (6 and more: equal)
_CHUNK_ENTRIES = 20_000_000  # sparse entries gathered per row-intersection chunk
_BFS_BYTES = 128 * 2**20  # gathered bit words per BFS level
_HUB_BYTES = 256 * 2**20  # cap on the hub bit sets (n_items x n_hubs bits)
_MAX_HUBS = 8192


def relation_table(d6: int, has_edges: bool = True) -> np.ndarray:
    """Seed relation value for hop distance 0..6 (index 6: 6 or more hops, or unreachable).

    ``d6`` is ``min(6, diameter)`` (6 when disconnected); ``has_edges`` is False only for a graph
    without edges, where the seed's outer min-max tops out at the diagonal instead of an edge.
    """
    d6 = int(d6)
    if not 1 <= d6 <= FAR:
        raise ValueError(f"d6 must be in 1..6, got {d6}")
    m = FAR - d6
    d = np.arange(FAR + 1)
    inner = (np.maximum(FAR - d, m) - m) / d6
    adjacent = (d == 1).astype(np.float64)
    top = 1.0 + (5 - m) / d6 if has_edges else 1.0
    return ((adjacent + inner) / top).astype(np.float32)


def relation_from_hops(hops: np.ndarray, d6: int, has_edges: bool = True) -> np.ndarray:
    """Relation value for exact hop distances (any value >= 6 means farther or unreachable).

    In a simple graph ``A(a, b) = 1`` exactly when ``d = 1``, so ``R`` is a function of ``d``:
    the model's "type" pattern is ``relation_from_hops([0, 1, 2], d6)``. Distances must be exact
    up to 5 (``RelationIndex.hops`` with ``max_hops >= 5``).
    """
    h = np.asarray(hops)
    if h.size and h.min() < 0:
        raise ValueError("hop distances must be >= 0")
    return relation_table(d6, has_edges)[np.minimum(h, FAR)]


def relation_lut(max_hops: int, d6: int, has_edges: bool = True) -> np.ndarray:
    """R per hop class 0..max_hops+1 (class max_hops+1 = farther; exact for max_hops >= 5)."""
    return relation_from_hops(np.arange(max_hops + 2), d6, has_edges)


# ---------------------------------------------------------------------------------------------
# sparse helpers


def _binary_csr(m: sp.spmatrix | sp.sparray, shape: tuple[int, int] | None = None) -> sp.csr_matrix:
    """Canonical 0/1 CSR (duplicates summed, zeros dropped, sorted indices, int8 ones)."""
    c = sp.csr_matrix(m, shape=shape, copy=True)
    c.sum_duplicates()
    c.eliminate_zeros()
    c.sort_indices()
    return sp.csr_matrix((np.ones(c.nnz, dtype=np.int8), c.indices, c.indptr), shape=c.shape)


def _csr_contains(m: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
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


def _chunks_by_cost(cost: np.ndarray, budget: int) -> list[tuple[int, int]]:
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


def _rows_intersect(x: sp.csr_matrix, rx: np.ndarray, y: sp.csr_matrix, ry: np.ndarray) -> np.ndarray:
    """Whether row ``rx[t]`` of ``x`` and row ``ry[t]`` of ``y`` share a column, for every t."""
    out = np.zeros(len(rx), dtype=bool)
    cost = np.diff(x.indptr)[rx] + np.diff(y.indptr)[ry] + 1
    for s, e in _chunks_by_cost(cost, _CHUNK_ENTRIES):
        prod = x[rx[s:e]].multiply(y[ry[s:e]]).tocsr()
        out[s:e] = np.diff(prod.indptr) > 0
    return out


def _expand_rows(m: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner position, column) for every stored entry of ``m[rows]``, without a Python loop."""
    starts = m.indptr[rows].astype(np.int64)
    lens = (m.indptr[rows + 1] - m.indptr[rows]).astype(np.int64)
    owner = np.repeat(np.arange(len(rows)), lens)
    offsets = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
    return owner, m.indices[np.repeat(starts, lens) + offsets]


def _any_by_owner(owner: np.ndarray, flags: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(owner[flags], minlength=n) > 0


# ---------------------------------------------------------------------------------------------
# bit-parallel breadth-first search: 64 sources per uint64 word, one sparse gather per level


def _bfs_levels(adj: sp.csr_matrix, sources: np.ndarray, depth: int):
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


def _bfs_source_chunk(adj: sp.csr_matrix) -> int:
    words = max(1, min(64, _BFS_BYTES // max(1, 8 * adj.nnz)))
    return 64 * words


def _bit_of(visited: np.ndarray, nodes: np.ndarray, slots: np.ndarray) -> np.ndarray:
    word = visited[nodes, slots >> 6]
    return ((word >> (slots & 63).astype(np.uint64)) & np.uint64(1)).astype(bool)


def _bfs_pair_distance(adj: sp.csr_matrix, a: np.ndarray, b: np.ndarray, limit: int) -> np.ndarray:
    """Exact ``min(d(a, b), limit + 1)`` by bit-parallel BFS from the distinct sources in ``a``."""
    out = np.full(len(a), limit + 1, dtype=np.int16)
    if len(a) == 0:
        return out
    src, slot_of_pair = np.unique(a, return_inverse=True)
    step = _bfs_source_chunk(adj)
    order = np.argsort(slot_of_pair, kind="stable")
    bounds = np.searchsorted(slot_of_pair[order], np.arange(0, len(src) + step, step))
    for c, s0 in enumerate(range(0, len(src), step)):
        pairs = order[bounds[c] : bounds[c + 1]]
        slots = slot_of_pair[pairs] - s0
        todo = np.ones(len(pairs), dtype=bool)
        for level, visited in _bfs_levels(adj, src[s0 : s0 + step], limit):
            idx = np.flatnonzero(todo)
            if len(idx) == 0:
                break
            hit = _bit_of(visited, b[pairs[idx]], slots[idx])
            out[pairs[idx[hit]]] = level
            todo[idx[hit]] = False
    return out


def _eccentricity(adj: sp.csr_matrix, source: int) -> tuple[float, int]:
    """Eccentricity of ``source`` (inf if some node is unreachable) and a farthest node."""
    dist = csgraph.dijkstra(adj, directed=False, indices=source, unweighted=True)
    far = int(np.argmax(dist))
    return float(dist[far]), far


def _diameter_info(adj: sp.csr_matrix) -> dict:
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
    step = _bfs_source_chunk(adj)
    diameter = 0
    for s0 in range(0, n, step):
        src = np.arange(s0, min(n, s0 + step))
        full_words = np.full((len(src) + 63) // 64, np.uint64(0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
        tail = len(src) % 64
        if tail:
            full_words[-1] = np.uint64((1 << tail) - 1)
        for level, visited in _bfs_levels(adj, src, FAR - 1):
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


# ---------------------------------------------------------------------------------------------


class RelationIndex:
    """Exact hop distances and seed relation values for node pairs, from sparse structures.

    Nodes are users ``0..n_users-1`` and items ``n_users..n_users+n_items-1``. ``hops`` is exact
    up to ``max_hops`` (farther or unreachable reads ``max_hops + 1``); ``relation`` always uses
    exact distances up to 5, which is all the seed formula distinguishes.
    """

    def __init__(
        self,
        train_csr: sp.spmatrix | sp.sparray,
        max_hops: int = 5,
        *,
        hub_threshold: int | None = None,
        include_eval_edges: bool = False,
    ) -> None:
        """``train_csr``: users x items, nonzero = edge (values and duplicates are ignored).

        ``hub_threshold``: items whose two-hop row is longer get a precomputed 4-hop ball as bits
        (default 128; at most the 8192 longest rows and 256 MB of bits). ``include_eval_edges``
        is only recorded (``build_relation_index`` chooses the edges).
        """
        self._set_options(max_hops, include_eval_edges)
        b = _binary_csr(train_csr)
        n_users, n_items = b.shape
        if n_users < 1 or n_items < 1:
            raise ValueError(f"need at least one user and one item, got shape {b.shape}")
        self.n_users, self.n_items = int(n_users), int(n_items)
        self._b = b
        self._bt = _binary_csr(b.T)
        self._c = _binary_csr(self._bt.astype(np.int32) @ b.astype(np.int32))
        self._adj = None
        info = _diameter_info(self._graph())
        self.d6 = int(info["d6"])
        self.diameter_info = info
        self._select_hubs(hub_threshold)

    # -- construction -------------------------------------------------------------------------

    def _set_options(self, max_hops: int, include_eval_edges: bool) -> None:
        if int(max_hops) < 0:
            raise ValueError("max_hops must be >= 0")
        self.max_hops = int(max_hops)
        self.include_eval_edges = bool(include_eval_edges)

    def _graph(self) -> sp.csr_matrix:
        """Symmetric (U+I)^2 adjacency (sparse), built on first use."""
        if self._adj is None:
            u, i = self.n_users, self.n_items
            self._adj = _binary_csr(sp.bmat([[None, self._b], [self._bt, None]], format="csr"), shape=(u + i, u + i))
        return self._adj

    def _select_hubs(self, hub_threshold: int | None) -> None:
        """Items with the longest ``C`` rows get their 4-hop ball as a bit set."""
        rowlen = np.diff(self._c.indptr)
        if hub_threshold is None:
            hub_threshold = 128
        self.hub_threshold = int(hub_threshold)
        cap = min(_MAX_HUBS, max(64, (_HUB_BYTES * 8) // max(1, self.n_items)))
        cand = np.flatnonzero(rowlen > self.hub_threshold)
        cand = cand[np.argsort(-rowlen[cand], kind="stable")][:cap]
        self._hubs = np.sort(cand).astype(np.int64)
        self._hub_slot = np.full(self.n_items, -1, dtype=np.int64)
        self._hub_slot[self._hubs] = np.arange(len(self._hubs))
        self._hub_bits = np.zeros((self.n_items, (len(self._hubs) + 63) // 64), dtype=np.uint64)
        adj = self._graph()
        step = _bfs_source_chunk(adj)
        for s0 in range(0, len(self._hubs), step):
            src = self._hubs[s0 : s0 + step] + self.n_users
            *_, (_, visited) = _bfs_levels(adj, src, 4)  # one array, updated in place per level
            w0 = s0 // 64
            self._hub_bits[:, w0 : w0 + visited.shape[1]] = visited[self.n_users :]

    # -- persistence --------------------------------------------------------------------------

    def save(self, directory: str | Path) -> list[Path]:
        """Write ``relation.npz`` (plain arrays, byte-reproducible) and ``relation.json``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        arrays = {
            "b_indptr": self._b.indptr,
            "b_indices": self._b.indices,
            "c_indptr": self._c.indptr,
            "c_indices": self._c.indices,
            "hubs": self._hubs,
            "hub_bits": self._hub_bits,
        }
        npz = d / "relation.npz"
        with zipfile.ZipFile(npz, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, arr in arrays.items():
                zi = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with zf.open(zi, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
        meta = {
            "format_version": FORMAT_VERSION,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_edges": int(self._b.nnz),
            "max_hops": self.max_hops,
            "d6": self.d6,
            "has_edges": self.has_edges,
            "hub_threshold": self.hub_threshold,
            "include_eval_edges": self.include_eval_edges,
            "diameter_info": self.diameter_info,
        }
        js = d / "relation.json"
        js.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return [npz, js]

    @classmethod
    def load(cls, directory: str | Path, max_hops: int | None = None) -> RelationIndex:
        """Load what ``save`` wrote (no pickle); ``max_hops`` overrides the saved one."""
        d = Path(directory)
        meta = json.loads((d / "relation.json").read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported relation format {meta.get('format_version')!r}")
        with np.load(d / "relation.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        obj = cls.__new__(cls)
        obj._set_options(meta["max_hops"] if max_hops is None else max_hops, meta["include_eval_edges"])
        obj._from_state({**meta, **arrays})
        return obj

    def _from_state(self, s: dict) -> None:
        self.n_users, self.n_items = int(s["n_users"]), int(s["n_items"])
        u, i = self.n_users, self.n_items
        b_data = np.ones(len(s["b_indices"]), dtype=np.int8)
        c_data = np.ones(len(s["c_indices"]), dtype=np.int8)
        self._b = sp.csr_matrix((b_data, s["b_indices"], s["b_indptr"]), shape=(u, i))
        self._c = sp.csr_matrix((c_data, s["c_indices"], s["c_indptr"]), shape=(i, i))
        if self._b.nnz != s["n_edges"] or len(s["hub_bits"]) != i:
            raise ValueError("relation.npz does not match relation.json")
        self._bt = _binary_csr(self._b.T)
        self._adj = None
        self.d6 = int(s["d6"])
        self.diameter_info = s["diameter_info"]
        self.hub_threshold = int(s["hub_threshold"])
        self._hubs = s["hubs"].astype(np.int64)
        self._hub_slot = np.full(i, -1, dtype=np.int64)
        self._hub_slot[self._hubs] = np.arange(len(self._hubs))
        self._hub_bits = s["hub_bits"]

    # -- queries ------------------------------------------------------------------------------

    @property
    def n_nodes(self) -> int:
        return self.n_users + self.n_items

    @property
    def n_edges(self) -> int:
        return int(self._b.nnz)

    @property
    def has_edges(self) -> bool:
        return self._b.nnz > 0

    def relation_table(self) -> np.ndarray:
        """Relation value by hop distance 0..6 (6: farther or unreachable) for this graph."""
        return relation_table(self.d6, self.has_edges)

    def relation_from_hops(self, hops: np.ndarray) -> np.ndarray:
        """Relation value for exact hop distances with this graph's ``D6``."""
        return relation_from_hops(hops, self.d6, self.has_edges)

    def hops(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Exact ``min(d(a, b), max_hops + 1)`` for node-id arrays (broadcast together)."""
        return self._distance(a, b, self.max_hops)

    def relation(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The seed's relation value ``R(a, b)`` (float32) for node-id arrays."""
        return self.relation_table()[np.minimum(self._distance(a, b, FAR - 1), FAR)]

    def _distance(self, a: np.ndarray, b: np.ndarray, limit: int) -> np.ndarray:
        a_arr, b_arr = np.broadcast_arrays(np.asarray(a), np.asarray(b))
        shape = a_arr.shape
        a1 = a_arr.reshape(-1).astype(np.int64)
        b1 = b_arr.reshape(-1).astype(np.int64)
        n = self.n_nodes
        if a1.size and (min(a1.min(), b1.min()) < 0 or max(a1.max(), b1.max()) >= n):
            raise IndexError(f"node ids must be in 0..{n - 1}")
        u = self.n_users
        out = np.full(a1.shape, limit + 1, dtype=np.int16)
        same = a1 == b1
        out[same] = 0
        a_user, b_user = a1 < u, b1 < u
        ii = np.flatnonzero(~same & ~a_user & ~b_user)
        uu = np.flatnonzero(~same & a_user & b_user)
        mixed = np.flatnonzero(a_user != b_user)
        if len(ii):
            out[ii] = self._item_item(a1[ii] - u, b1[ii] - u, limit)
        if len(uu):
            out[uu] = self._user_user(a1[uu], b1[uu], limit)
        if len(mixed):
            users = np.where(a_user[mixed], a1[mixed], b1[mixed])
            items = np.where(a_user[mixed], b1[mixed], a1[mixed]) - u
            out[mixed] = self._user_item(users, items, limit)
        if limit >= FAR:
            far = np.flatnonzero(out > FAR - 1)
            if len(far):
                out[far] = _bfs_pair_distance(self._graph(), a1[far], b1[far], limit)
        return out.reshape(shape)

    def _items_within4(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """d(i, j) <= 4 for item ids (hub bit sets where either end is a hub)."""
        res = np.zeros(len(i), dtype=bool)
        si, sj = self._hub_slot[i], self._hub_slot[j]
        hi, hj = si >= 0, sj >= 0
        if hi.any():
            res[hi] = _bit_of(self._hub_bits, j[hi], si[hi])
        only_j = hj & ~hi
        if only_j.any():
            res[only_j] = _bit_of(self._hub_bits, i[only_j], sj[only_j])
        rest = np.flatnonzero(~hi & ~hj)
        if len(rest):
            res[rest] = _rows_intersect(self._c, i[rest], self._c, j[rest])
        return res

    def _item_item(self, i: np.ndarray, j: np.ndarray, limit: int) -> np.ndarray:
        out = np.full(len(i), FAR, dtype=np.int16)
        if limit < 2:
            return np.minimum(out, limit + 1)
        two = _csr_contains(self._c, i, j)
        out[two] = 2
        if limit >= 4:
            rest = np.flatnonzero(~two)
            out[rest[self._items_within4(i[rest], j[rest])]] = 4
        return np.minimum(out, limit + 1)

    def _user_item(self, us: np.ndarray, it: np.ndarray, limit: int) -> np.ndarray:
        out = np.full(len(us), FAR, dtype=np.int16)
        one = _csr_contains(self._b, us, it)
        out[one] = 1
        rest = np.flatnonzero(~one)
        if limit >= 3 and len(rest):
            three = _rows_intersect(self._b, us[rest], self._c, it[rest])
            out[rest[three]] = 3
            rest = rest[~three]
        if limit >= 5 and len(rest):
            out[rest[self._expanded(us[rest], it[rest], self._items_within4)]] = 5
        return np.minimum(out, limit + 1)

    def _user_user(self, u1: np.ndarray, u2: np.ndarray, limit: int) -> np.ndarray:
        out = np.full(len(u1), FAR, dtype=np.int16)
        if limit < 2:
            return np.minimum(out, limit + 1)
        two = _rows_intersect(self._b, u1, self._b, u2)
        out[two] = 2
        rest = np.flatnonzero(~two)
        if limit >= 4 and len(rest):
            # some item k of u1 with d(k, u2) <= 3, i.e. B[u2] meets C[k]
            def item_user_le3(k: np.ndarray, v: np.ndarray) -> np.ndarray:
                return _rows_intersect(self._b, v, self._c, k)

            out[rest[self._expanded(u1[rest], u2[rest], item_user_le3)]] = 4
        return np.minimum(out, limit + 1)

    def _expanded(self, users: np.ndarray, other: np.ndarray, test) -> np.ndarray:
        """any over items k of ``users[t]`` of ``test(k, other[t])``, chunked by degree."""
        res = np.zeros(len(users), dtype=bool)
        deg = np.diff(self._b.indptr)[users] + 1
        for s, e in _chunks_by_cost(deg, 2_000_000):
            owner, k = _expand_rows(self._b, users[s:e])
            if len(k):
                res[s:e] = _any_by_owner(owner, test(k, other[s:e][owner]), e - s)
        return res


def build_relation_index(
    interactions: pd.DataFrame, n_users: int, n_items: int, include_eval_edges: bool = False, max_hops: int = 5
) -> RelationIndex:
    """``RelationIndex`` over the train split (or train + val + test, the seed's leaky graph).

    ``interactions`` has int columns ``uid`` and ``iid`` (0-based) and ``split`` in
    {"train", "val", "test"}. Val/test rows are never read unless ``include_eval_edges``.
    """
    splits = ("train", "val", "test") if include_eval_edges else ("train",)
    csr = interaction_matrix(interactions, n_users, n_items, splits, dtype=np.int8)
    return RelationIndex(csr, max_hops=max_hops, include_eval_edges=include_eval_edges)


def graph_stats(index: RelationIndex, n_sample_pairs: int, seed: int) -> dict:
    """Sizes, ``D6`` and the hop-distance histogram of a seeded sample of distinct item pairs."""
    rng = np.random.default_rng(seed)
    hist: dict[str, int] = {}
    n_pairs = 0
    if index.n_items >= 2 and n_sample_pairs > 0:
        i = rng.integers(0, index.n_items, n_sample_pairs)
        j = (i + rng.integers(1, index.n_items, n_sample_pairs)) % index.n_items  # j != i
        h = index.hops(i + index.n_users, j + index.n_users)
        counts = np.bincount(h, minlength=index.max_hops + 2)
        hist = {str(k): int(counts[k]) for k in range(index.max_hops + 1)}
        hist[f">{index.max_hops}"] = int(counts[index.max_hops + 1])
        n_pairs = int(n_sample_pairs)
    deg_u = np.diff(index._b.indptr)
    deg_i = np.diff(index._bt.indptr)
    return {
        "nodes": index.n_nodes,
        "users": index.n_users,
        "items": index.n_items,
        "edges": index.n_edges,
        "include_eval_edges": index.include_eval_edges,
        "d6": index.d6,
        "diameter": index.diameter_info,
        "isolated_users": int((deg_u == 0).sum()),
        "isolated_items": int((deg_i == 0).sum()),
        "max_hops": index.max_hops,
        "relation_by_hops": [float(x) for x in index.relation_table()],
        "item_pair_hops": {"seed": int(seed), "pairs": n_pairs, "histogram": hist},
        "hubs": int(len(index._hubs)),
        "hub_threshold": index.hub_threshold,
    }
