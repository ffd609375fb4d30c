"""Tokenizers (the `tokenizer` stage) and the entity-token id space.

Free text goes through a subword tokenizer; user and item tokens never do. They map
straight to ids past the backbone's input-embedding size (`vocab + u`, `vocab + U + i`)
so that no merge rule can split them and no review text can forge them (docs/method.md 4.2).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from llm4rec.model.prompts import TEMPLATE_TEXTS

END_OF_TEXT = "<|endoftext|>"
TEMPLATE_REPEAT_CAP = 100_000
_ENTITY_RE = re.compile(r"^(user|item)_(\d+)$")


def train_bpe_tokenizer(
    texts: Iterable[str],
    out_dir: str | Path,
    vocab_size: int = 8192,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a GPT-2-style byte-level BPE on `texts` and save it to `out_dir`.

    Saved as a transformers fast tokenizer so `AutoTokenizer.from_pretrained(out_dir)` (and
    hence `load_tokenizer`) loads it like any hub tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        unk_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return fast


def tokenizer_corpus(items: pd.DataFrame, interactions: pd.DataFrame) -> list[str]:
    """Texts a from-scratch tokenizer learns from: train reviews, item fields, and the
    prompt templates' text (`prompts.TEMPLATE_TEXTS`).

    The templates are what every prompt holds, so each is counted once per user and once
    per item (as often as one pass over the prompts can hold it), at most
    `TEMPLATE_REPEAT_CAP` times (enough for any merge, and a bounded corpus on catalogs with
    millions of users); the BPE then merges their words into whole tokens whatever the
    dataset's texts, as a pre-trained backbone's tokenizer has them. Nothing from
    validation or test enters.
    """
    texts = interactions.loc[interactions["split"] == "train", "review_text"].dropna().tolist()
    for col in ("title", "brand", "description"):
        if col in items:
            texts += items[col].dropna().tolist()
    if "categories" in items:
        texts += [", ".join(c) for c in items["categories"] if c is not None and len(c)]
    n_repeat = min(int(interactions["uid"].nunique()) + len(items), TEMPLATE_REPEAT_CAP)
    texts += [t for t in TEMPLATE_TEXTS for _ in range(n_repeat)]
    return [str(t) for t in texts]


def tokenizer_source(backbone: str, tokenizer_dir: str | Path | None) -> str:
    """Where a backbone's tokenizer is: `tiny`'s is trained by the `tokenizer` rule, any
    other backbone brings its own (hub name or folder)."""
    if backbone == "tiny":
        if tokenizer_dir is None:
            raise ValueError("backbone 'tiny' needs the tokenizer trained by the `tokenizer` rule")
        return str(tokenizer_dir)
    return backbone


def backbone_tokenizer(backbone: str, tokenizer_dir: str | Path | None) -> PreTrainedTokenizerBase:
    """The tokenizer of a backbone (see `tokenizer_source`), loaded."""
    return load_tokenizer(tokenizer_source(backbone, tokenizer_dir))


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """Load a fast tokenizer by hub name or local path (never remote code)."""
    tok = AutoTokenizer.from_pretrained(str(name_or_path), use_fast=True, trust_remote_code=False)
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{name_or_path}: a fast (Rust) tokenizer is required for batched encoding")
    return tok


def tokenize_texts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[np.ndarray]:
    """Tokenize free texts in one batched call, without special tokens."""
    if len(texts) == 0:
        return []
    enc = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [np.asarray(e, dtype=np.int64) for e in enc]


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id used for right padding (never attended, never a target)."""
    for cand in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if cand is not None:
            return int(cand)
    return 0


@dataclass(frozen=True)
class EntityVocab:
    """Id layout of entity tokens: `vocab + u` for users, `vocab + U + i` for items.

    `vocab` is the backbone's input-embedding size (not `len(tokenizer)`), so entity ids
    never collide with text ids. `node = id - vocab` is the graph node id of
    `RelationIndex` (users 0..U-1, items U..U+I-1).
    """

    vocab: int
    n_users: int
    n_items: int

    @property
    def n_nodes(self) -> int:
        return self.n_users + self.n_items

    def user_ids(self, u: np.ndarray | int) -> np.ndarray:
        """Token ids of users `u`."""
        return self.vocab + np.asarray(u, dtype=np.int64)

    def item_ids(self, i: np.ndarray | int) -> np.ndarray:
        """Token ids of items `i`."""
        return self.vocab + self.n_users + np.asarray(i, dtype=np.int64)

    def node_of(self, ids: np.ndarray) -> np.ndarray:
        """Graph node per token id; -1 for text tokens."""
        ids = np.asarray(ids, dtype=np.int64)
        return np.where(ids >= self.vocab, ids - self.vocab, -1)

    def token_string(self, token_id: int) -> str:
        """`user_{u}` / `item_{i}` for an entity id (ValueError for text ids)."""
        node = int(token_id) - self.vocab
        if node < 0 or node >= self.n_nodes:
            raise ValueError(f"{token_id} is not an entity id")
        if node < self.n_users:
            return f"user_{node}"
        return f"item_{node - self.n_users}"

    def token_id(self, name: str) -> int:
        """Inverse of `token_string`."""
        m = _ENTITY_RE.match(name)
        if m is None:
            raise ValueError(f"{name!r} is not an entity token")
        k = int(m.group(2))
        if m.group(1) == "user":
            if k >= self.n_users:
                raise ValueError(f"{name}: only {self.n_users} users")
            return int(self.user_ids(k))
        if k >= self.n_items:
            raise ValueError(f"{name}: only {self.n_items} items")
        return int(self.item_ids(k))

    def decode(self, ids: Sequence[int], tokenizer: PreTrainedTokenizerBase) -> str:
        """Readable text of a mixed sequence: entity tokens by name (space-separated from
        what precedes them, as the templates read), runs of text decoded."""
        out: list[str] = []
        run: list[int] = []
        for t in ids:
            if int(t) >= self.vocab:
                if run:
                    out.append(tokenizer.decode(run))
                    run = []
                sep = " " if out and not out[-1][-1:].isspace() else ""
                out.append(sep + self.token_string(int(t)))
            else:
                run.append(int(t))
        if run:
            out.append(tokenizer.decode(run))
        return "".join(out)
