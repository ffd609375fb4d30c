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

from llm4rec.data.preprocess import interaction_matrix
from llm4rec.graph.search import (
    FAR,
    any_by_owner,
    bfs_levels,
    bfs_pair_distance,
    bfs_source_chunk,
    binary_pattern,
    bit_of,
    chunks_by_cost,
    csr_contains,
    estimate_diameter,
    expand_rows,
    rows_intersect,
)

HUB_BYTES = 256 * 2**20  # cap on the hub bit sets (n_items x n_hubs bits)
MAX_HUBS = 8192
FORMAT_VERSION = 1
EXACT_HOPS = 5  # the seed's relation tells hop distances apart up to 5 (6 and more: equal)


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


class RelationIndex:
    """Exact hop distances and seed relation values for node pairs, from sparse structures.

    Nodes are users ``0..n_users-1`` and items ``n_users..n_users+n_items-1``. ``hops`` is exact
    up to ``max_hops`` (farther or unreachable reads ``max_hops + 1``); ``relation`` always uses
    exact distances up to 5, which is all the seed formula distinguishes.
    """

    def __init__(
        self,
        train_csr: sp.spmatrix | sp.sparray,
        max_hops: int = EXACT_HOPS,
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
        b = binary_pattern(train_csr)
        n_users, n_items = b.shape
        if n_users < 1 or n_items < 1:
            raise ValueError(f"need at least one user and one item, got shape {b.shape}")
        self.n_users, self.n_items = int(n_users), int(n_items)
        self._b = b
        self._bt = binary_pattern(b.T)
        self._c = binary_pattern(self._bt.astype(np.int32) @ b.astype(np.int32))
        self._adj = None
        info = estimate_diameter(self._graph())
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
            self._adj = binary_pattern(sp.bmat([[None, self._b], [self._bt, None]], format="csr"), shape=(u + i, u + i))
        return self._adj

    def _select_hubs(self, hub_threshold: int | None) -> None:
        """Items with the longest ``C`` rows get their 4-hop ball as a bit set."""
        rowlen = np.diff(self._c.indptr)
        if hub_threshold is None:
            hub_threshold = 128
        self.hub_threshold = int(hub_threshold)
        cap = min(MAX_HUBS, max(64, (HUB_BYTES * 8) // max(1, self.n_items)))
        cand = np.flatnonzero(rowlen > self.hub_threshold)
        cand = cand[np.argsort(-rowlen[cand], kind="stable")][:cap]
        self._hubs = np.sort(cand).astype(np.int64)
        self._hub_slot = np.full(self.n_items, -1, dtype=np.int64)
        self._hub_slot[self._hubs] = np.arange(len(self._hubs))
        self._hub_bits = np.zeros((self.n_items, (len(self._hubs) + 63) // 64), dtype=np.uint64)
        adj = self._graph()
        step = bfs_source_chunk(adj)
        for s0 in range(0, len(self._hubs), step):
            src = self._hubs[s0 : s0 + step] + self.n_users
            *_, (_, visited) = bfs_levels(adj, src, 4)  # one array, updated in place per level
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
        self._bt = binary_pattern(self._b.T)
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
                out[far] = bfs_pair_distance(self._graph(), a1[far], b1[far], limit)
        return out.reshape(shape)

    def _items_within4(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """d(i, j) <= 4 for item ids (hub bit sets where either end is a hub)."""
        res = np.zeros(len(i), dtype=bool)
        si, sj = self._hub_slot[i], self._hub_slot[j]
        hi, hj = si >= 0, sj >= 0
        if hi.any():
            res[hi] = bit_of(self._hub_bits, j[hi], si[hi])
        only_j = hj & ~hi
        if only_j.any():
            res[only_j] = bit_of(self._hub_bits, i[only_j], sj[only_j])
        rest = np.flatnonzero(~hi & ~hj)
        if len(rest):
            res[rest] = rows_intersect(self._c, i[rest], self._c, j[rest])
        return res

    def _item_item(self, i: np.ndarray, j: np.ndarray, limit: int) -> np.ndarray:
        out = np.full(len(i), FAR, dtype=np.int16)
        if limit < 2:
            return np.minimum(out, limit + 1)
        two = csr_contains(self._c, i, j)
        out[two] = 2
        if limit >= 4:
            rest = np.flatnonzero(~two)
            out[rest[self._items_within4(i[rest], j[rest])]] = 4
        return np.minimum(out, limit + 1)

    def _user_item(self, us: np.ndarray, it: np.ndarray, limit: int) -> np.ndarray:
        out = np.full(len(us), FAR, dtype=np.int16)
        one = csr_contains(self._b, us, it)
        out[one] = 1
        rest = np.flatnonzero(~one)
        if limit >= 3 and len(rest):
            three = rows_intersect(self._b, us[rest], self._c, it[rest])
            out[rest[three]] = 3
            rest = rest[~three]
        if limit >= 5 and len(rest):
            out[rest[self._expanded(us[rest], it[rest], self._items_within4)]] = 5
        return np.minimum(out, limit + 1)

    def _user_user(self, u1: np.ndarray, u2: np.ndarray, limit: int) -> np.ndarray:
        out = np.full(len(u1), FAR, dtype=np.int16)
        if limit < 2:
            return np.minimum(out, limit + 1)
        two = rows_intersect(self._b, u1, self._b, u2)
        out[two] = 2
        rest = np.flatnonzero(~two)
        if limit >= 4 and len(rest):
            # some item k of u1 with d(k, u2) <= 3, i.e. B[u2] meets C[k]
            def item_user_le3(k: np.ndarray, v: np.ndarray) -> np.ndarray:
                return rows_intersect(self._b, v, self._c, k)

            out[rest[self._expanded(u1[rest], u2[rest], item_user_le3)]] = 4
        return np.minimum(out, limit + 1)

    def _expanded(self, users: np.ndarray, other: np.ndarray, test) -> np.ndarray:
        """any over items k of ``users[t]`` of ``test(k, other[t])``, chunked by degree."""
        res = np.zeros(len(users), dtype=bool)
        deg = np.diff(self._b.indptr)[users] + 1
        for s, e in chunks_by_cost(deg, 2_000_000):
            owner, k = expand_rows(self._b, users[s:e])
            if len(k):
                res[s:e] = any_by_owner(owner, test(k, other[s:e][owner]), e - s)
        return res


def build_relation_index(
    interactions: pd.DataFrame, n_users: int, n_items: int, include_eval_edges: bool = False, max_hops: int = EXACT_HOPS
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
