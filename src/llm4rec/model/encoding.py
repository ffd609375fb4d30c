"""The prompts of docs/method.md section 4 as token ids, and the `encode` stage.

An example is one sequence: prompt then main text, no inner padding. Entity tokens are
placed by the builder as ids (`EntityVocab`); only free text and the constant template
fragments go through the tokenizer, each fragment once, each text once per dataset.
Examples are stored flat (ids + offsets) so a whole dataset is a few numpy arrays that
round-trip through an `.npz` file (no pickle). The `encode` rule tokenizes the content
examples once per dataset (`encode_content`); the collaborative, fine-tuning and evaluation
prompts are built by the training and evaluation stages from the train items.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from transformers import PreTrainedTokenizerBase

from llm4rec.model import prompts
from llm4rec.model.settings import TinySettings, backbone_geometry
from llm4rec.model.tokenization import EntityVocab, backbone_tokenizer, tokenize_texts

KIND_NAMES: tuple[str, ...] = (
    "review",
    "title",
    "brand",
    "categories",
    "description",
    "so_brand",
    "so_category",
    "collab",
    "finetune",
    "eval",
)
KIND: dict[str, int] = {name: k for k, name in enumerate(KIND_NAMES)}

# Kinds whose entity pairs have graph distances that vary (docs/method.md 3.7): only these need
# `RelationIndex`; every other prompt holds one user and that user's own train items.
GRAPH_KINDS: frozenset[int] = frozenset({KIND["so_brand"], KIND["so_category"]})
CONTENT_KINDS: frozenset[int] = frozenset(KIND[k] for k in KIND_NAMES[:7])


@dataclass
class Examples:
    """A set of encoded examples, flat.

    ids[offsets[n]:offsets[n+1]] is example n (entity ids already mapped); the first
    prompt_len[n] tokens are the prompt. `items` (by `item_offsets`) holds the user's train
    items for fine-tuning/evaluation examples: the multi-hot target and the extra
    regularization set; empty otherwise.
    """

    ids: np.ndarray
    offsets: np.ndarray
    prompt_len: np.ndarray
    kind: np.ndarray
    uid: np.ndarray
    items: np.ndarray
    item_offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.prompt_len)

    def __getitem__(self, n: int) -> dict[str, np.ndarray | int]:
        return {
            "input_ids": self.ids[self.offsets[n] : self.offsets[n + 1]],
            "prompt_len": int(self.prompt_len[n]),
            "kind": int(self.kind[n]),
            "uid": int(self.uid[n]),
            "items": self.items[self.item_offsets[n] : self.item_offsets[n + 1]],
        }

    def lengths(self) -> np.ndarray:
        """Sequence length per example."""
        return np.diff(self.offsets)

    def save(self, path: str | Path) -> None:
        """Write to an `.npz` file (plain arrays)."""
        np.savez(
            path,
            ids=self.ids,
            offsets=self.offsets,
            prompt_len=self.prompt_len,
            kind=self.kind,
            uid=self.uid,
            items=self.items,
            item_offsets=self.item_offsets,
        )

    @classmethod
    def load(cls, path: str | Path) -> Examples:
        """Read what `save` wrote."""
        with np.load(path, allow_pickle=False) as z:
            return cls(**{k: z[k] for k in z.files})

    def subset(self, rows: np.ndarray) -> Examples:
        """The examples at positions `rows`, in that order."""
        parts = []
        for n in rows:
            s, e = self.offsets[n], self.offsets[n + 1]
            si, ei = self.item_offsets[n], self.item_offsets[n + 1]
            parts.append((self.ids[s:e], self.items[si:ei]))
        lens = np.array([len(p[0]) for p in parts], dtype=np.int64)
        ilens = np.array([len(p[1]) for p in parts], dtype=np.int64)
        return Examples(
            ids=np.concatenate([p[0] for p in parts]) if parts else self.ids[:0],
            offsets=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
            prompt_len=self.prompt_len[rows],
            kind=self.kind[rows],
            uid=self.uid[rows],
            items=np.concatenate([p[1] for p in parts]) if parts else self.items[:0],
            item_offsets=np.concatenate([[0], np.cumsum(ilens)]).astype(np.int64),
        )

    @classmethod
    def concat(cls, parts: Sequence[Examples]) -> Examples:
        """Join example sets (e.g. text kinds and second-order prompts)."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return _Builder().finish()
        ids = np.concatenate([p.ids for p in parts])
        items = np.concatenate([p.items for p in parts])
        starts = _starts([p.offsets[-1] for p in parts])
        offsets = np.concatenate([[0]] + [p.offsets[1:] + s for p, s in zip(parts, starts)])
        istarts = _starts([p.item_offsets[-1] for p in parts])
        item_offsets = np.concatenate([[0]] + [p.item_offsets[1:] + s for p, s in zip(parts, istarts)])
        return cls(
            ids=ids,
            offsets=offsets.astype(np.int64),
            prompt_len=np.concatenate([p.prompt_len for p in parts]),
            kind=np.concatenate([p.kind for p in parts]),
            uid=np.concatenate([p.uid for p in parts]),
            items=items,
            item_offsets=item_offsets.astype(np.int64),
        )


def _starts(sizes: Sequence[int]) -> list[int]:
    return list(np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64))


class _Builder:
    """Accumulates examples as lists of arrays; `finish` concatenates once."""

    def __init__(self) -> None:
        self.seqs: list[np.ndarray] = []
        self.prompt_len: list[int] = []
        self.kind: list[int] = []
        self.uid: list[int] = []
        self.items: list[np.ndarray] = []

    def add(
        self, prompt: list[np.ndarray], main: np.ndarray | None, kind: int, uid: int, items: np.ndarray | None = None
    ) -> None:
        p = np.concatenate(prompt) if prompt else np.zeros(0, np.int64)
        seq = p if main is None or len(main) == 0 else np.concatenate([p, main])
        self.seqs.append(seq.astype(np.int64, copy=False))
        self.prompt_len.append(len(p))
        self.kind.append(kind)
        self.uid.append(uid)
        self.items.append(np.zeros(0, np.int64) if items is None else np.asarray(items, np.int64))

    def finish(self) -> Examples:
        lens = np.array([len(s) for s in self.seqs], dtype=np.int64)
        ilens = np.array([len(s) for s in self.items], dtype=np.int64)
        return Examples(
            ids=np.concatenate(self.seqs) if self.seqs else np.zeros(0, np.int64),
            offsets=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
            prompt_len=np.asarray(self.prompt_len, dtype=np.int32),
            kind=np.asarray(self.kind, dtype=np.int8),
            uid=np.asarray(self.uid, dtype=np.int64),
            items=np.concatenate(self.items) if self.items else np.zeros(0, np.int64),
            item_offsets=np.concatenate([[0], np.cumsum(ilens)]).astype(np.int64),
        )


class _Fragments:
    """Constant template text, tokenized once per fragment."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[str, np.ndarray] = {}

    def __call__(self, text: str) -> np.ndarray:
        if text not in self.cache:
            self.cache[text] = tokenize_texts(self.tokenizer, [text])[0]
        return self.cache[text]


def _check_fits(prompt_len: int, max_len: int, what: str) -> None:
    if prompt_len >= max_len:
        raise ValueError(f"{what}: the template alone ({prompt_len} tokens) does not fit a context of {max_len}")


def _keep_subset(n: int, n_keep: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of `n_keep` of `n` history items, seeded-random, in their original order."""
    if n_keep >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=max(n_keep, 0), replace=False))


def _field_text(v: object) -> str | None:
    """A processed text field as prompt text: the processed tables hold text cleaned by
    `text.clean_text` (preprocess), so only a list field (categories) needs joining, its
    entries by ", "; a missing or empty field gives None (no prompt)."""
    if v is None:
        return None
    if isinstance(v, (list, tuple, np.ndarray)):
        v = ", ".join(str(x) for x in v)
    elif not isinstance(v, str):
        return None if pd.isna(v) else (str(v) or None)
    return v or None


def build_content_examples(
    items: pd.DataFrame,
    interactions: pd.DataFrame,
    second_order: pd.DataFrame | None,
    tokenizer: PreTrainedTokenizerBase,
    ev: EntityVocab,
    max_len: int,
    seed: int = 0,
) -> Examples:
    """All content examples: reviews, item text fields, second-order prompts.

    Main texts over the context are cut at the tail; second-order prompts over it first
    drop seeded-random items (never the template).
    """
    frag = _Fragments(tokenizer)
    b = _Builder()

    rev = interactions.loc[(interactions["split"] == "train"), ["uid", "iid", "review_text"]]
    texts = rev["review_text"].map(_field_text)
    rev = rev.loc[texts.notna()].assign(review_text=texts[texts.notna()]).sort_values(["uid", "iid"], kind="stable")
    mains = tokenize_texts(tokenizer, [" " + t for t in rev["review_text"]])
    f_wrote, f_colon = frag(prompts.REVIEW), frag(prompts.COLON)
    for u, i, main in zip(rev["uid"].to_numpy(), rev["iid"].to_numpy(), mains):
        prompt = [ev.user_ids([u]), f_wrote, ev.item_ids([i]), f_colon]
        plen = sum(len(p) for p in prompt)
        _check_fits(plen, max_len, "review prompt")
        b.add(prompt, main[: max_len - plen], KIND["review"], int(u))

    it = items.sort_values("iid", kind="stable")
    for field, tail, head in prompts.ITEM_FIELDS:
        if field not in it.columns:
            continue
        vals = it[field].map(_field_text)
        keep = vals.notna().to_numpy()
        iids = it["iid"].to_numpy()[keep]
        mains = tokenize_texts(tokenizer, [" " + t for t in vals[keep]])
        f_head, f_tail = frag(head), frag(tail)
        for i, main in zip(iids, mains):
            prompt = [f_head, ev.item_ids([i]), f_tail]
            plen = sum(len(p) for p in prompt)
            _check_fits(plen, max_len, f"{field} prompt")
            b.add(prompt, main[: max_len - plen], KIND[field], -1)

    if second_order is not None and len(second_order):
        mains = tokenize_texts(tokenizer, [" " + str(v) for v in second_order["value"]])
        f_these, f_comma = frag(prompts.THESE_ITEMS), frag(prompts.COMMA)
        for row, (kind, iids, main) in enumerate(zip(second_order["kind"], second_order["item_ids"], mains)):
            iids = np.asarray(iids, dtype=np.int64)
            f_tail = frag(prompts.SECOND_ORDER_TAIL[kind])
            fixed = len(f_these) + len(f_tail)
            per_item = 1 + len(f_comma)
            avail = max_len - fixed - len(main)
            n_keep = max(1, (avail + len(f_comma)) // per_item)
            rng = np.random.default_rng([seed, KIND["so_" + kind], row])
            iids = iids[_keep_subset(len(iids), n_keep, rng)]
            ent = ev.item_ids(iids)
            body = np.empty(len(ent) * per_item - len(f_comma), dtype=np.int64)
            body[::per_item] = ent
            for c in range(len(f_comma)):
                body[1 + c :: per_item] = f_comma[c]
            prompt = [f_these, body, f_tail]
            plen = sum(len(p) for p in prompt)
            _check_fits(plen, max_len, "second-order prompt")
            b.add(prompt, main[: max_len - plen], KIND["so_" + kind], -1)
    return b.finish()


def encode_content(
    items: pd.DataFrame,
    interactions: pd.DataFrame,
    second_order: pd.DataFrame,
    tokenizer_dir: str | Path | None,
    backbone: str,
    tiny: TinySettings,
    max_length: int | None,
    seed: int,
) -> Examples:
    """All content examples of a dataset, tokenized once (the `encode` rule caches them)."""
    tokenizer = backbone_tokenizer(backbone, tokenizer_dir)
    vocab, max_len = backbone_geometry(backbone, tiny, tokenizer, max_length)
    ev = EntityVocab(vocab, int(interactions["uid"].max()) + 1, len(items))
    return build_content_examples(items, interactions, second_order, tokenizer, ev, max_len, seed)


def build_collab_examples(
    train_items: Sequence[np.ndarray],
    tokenizer: PreTrainedTokenizerBase,
    ev: EntityVocab,
    max_len: int,
    seed: int = 0,
) -> Examples:
    """One collaborative example per user with train items: prompt `user_u has interacted
    with`, main = the train items ascending; over-long mains drop seeded-random items."""
    frag = _Fragments(tokenizer)
    f_has = frag(prompts.HAS_INTERACTED)
    b = _Builder()
    plen = 1 + len(f_has)
    _check_fits(plen, max_len, "collaborative prompt")
    for u, its in enumerate(train_items):
        if len(its) == 0:
            continue
        its = np.sort(np.asarray(its, np.int64))
        rng = np.random.default_rng([seed, KIND["collab"], u])
        its = its[_keep_subset(len(its), max_len - plen, rng)]
        b.add([ev.user_ids([u]), f_has], ev.item_ids(its), KIND["collab"], u)
    return b.finish()


def _user_prompt(
    b: _Builder,
    frag: _Fragments,
    ev: EntityVocab,
    u: int,
    kept: np.ndarray,
    all_items: np.ndarray,
    max_len: int,
    rng: np.random.Generator,
    kind: int,
) -> None:
    f_has, f_comma, f_will = frag(prompts.HAS_INTERACTED), frag(prompts.COMMA), frag(prompts.WILL_INTERACT)
    fixed = 2 + len(f_has) + len(f_comma) + len(f_will)
    _check_fits(fixed, max_len + 1, "fine-tuning prompt")
    kept = kept[_keep_subset(len(kept), max_len - fixed, rng)]
    user = ev.user_ids([u])
    b.add([user, f_has, ev.item_ids(kept), f_comma, user, f_will], None, kind, u, items=all_items)


def build_finetune_examples(
    train_items: Sequence[np.ndarray],
    tokenizer: PreTrainedTokenizerBase,
    ev: EntityVocab,
    max_len: int,
    seed: int,
    epoch: int,
    hide_frac: float,
) -> Examples:
    """Fine-tuning prompts for one epoch, users in id order.

    Each user's generator is seeded by (seed, epoch, user): it hides max(1, int(hide_frac n))
    train items (never all of them), shuffles the kept ones, and (if needed) drops kept
    items to fit.
    """
    frag = _Fragments(tokenizer)
    b = _Builder()
    for u, its in enumerate(train_items):
        if len(its) == 0:
            continue
        its = np.sort(np.asarray(its, np.int64))
        rng = np.random.default_rng([seed, epoch, u])
        n_hide = min(max(1, int(hide_frac * len(its))), max(1, len(its) - 1))
        perm = rng.permutation(its)
        _user_prompt(b, frag, ev, u, perm[n_hide:], its, max_len, rng, KIND["finetune"])
    return b.finish()


def build_eval_examples(
    train_items: Sequence[np.ndarray],
    tokenizer: PreTrainedTokenizerBase,
    ev: EntityVocab,
    max_len: int,
    seed: int = 0,
    users: Sequence[int] | None = None,
) -> Examples:
    """Evaluation prompts: all train items ascending (seeded-random drops only to fit)."""
    frag = _Fragments(tokenizer)
    b = _Builder()
    for u in range(len(train_items)) if users is None else users:
        its = np.sort(np.asarray(train_items[u], np.int64))
        rng = np.random.default_rng([seed, KIND["eval"], int(u)])
        _user_prompt(b, frag, ev, int(u), its, its, max_len, rng, KIND["eval"])
    return b.finish()
