"""Entity-aware encoding: tokenizer, prompts of docs/method.md section 4, truncation, caching."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from transformers import AutoTokenizer

from llm4rec.data.preprocess import train_items_by_user
from llm4rec.model.encoding import (
    KIND,
    Examples,
    build_collab_examples,
    build_content_examples,
    build_eval_examples,
    build_finetune_examples,
)
from llm4rec.model.prompts import HAS_INTERACTED, TEMPLATE_TEXTS
from llm4rec.model.tokenization import (
    EntityVocab,
    load_tokenizer,
    tokenize_texts,
    tokenizer_corpus,
    train_bpe_tokenizer,
)

CORPUS = [
    "great product, works as described and arrived on time",
    "The title of this magazine is great. I love reading it every month.",
    "user_12 said item_7 was bad; the brand is Acme and the category is Kitchen",
    "These items have the same brand: Acme. They are all in the category: Home",
    "wrote the following review for has interacted with will interact with",
] * 20


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    train_bpe_tokenizer(iter(CORPUS), d, vocab_size=400, min_frequency=1)
    return load_tokenizer(d)


def _tables():
    items = pd.DataFrame(
        {
            "iid": [0, 1, 2, 3],
            "item_id": ["a", "b", "c", "d"],
            "title": ["Great Magazine", None, "", "Kitchen Monthly"],
            "brand": ["Acme", "Acme", None, "Other"],
            "description": [None, "works as described", None, None],
            "categories": [["Home", "Kitchen"], [], None, ["Home"]],
        }
    )
    rows = [
        (0, 0, "train", "great product user_12 item_7"),
        (0, 1, "train", None),
        (0, 2, "val", None),
        (1, 1, "train", "love it"),
        (1, 3, "train", "ok"),
        (1, 0, "test", None),
        (2, 2, "train", ""),  # blank: preprocess's clean_text already made "   " null
        (2, 3, "train", "fine"),
    ]
    inter = pd.DataFrame(rows, columns=["uid", "iid", "split", "review_text"])
    inter["rating"] = 5.0
    inter["timestamp"] = 0
    so = pd.DataFrame({"kind": ["brand", "category"], "value": ["Acme", "Home"], "item_ids": [[0, 1], [0, 3]]})
    return items, inter, so


def test_tokenizer_roundtrip_with_autotokenizer(tok, tmp_path):
    auto = AutoTokenizer.from_pretrained(tok.name_or_path)
    text = " great product, works as described"
    assert auto(text, add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    assert auto.decode(auto(text, add_special_tokens=False)["input_ids"]) == text


def test_entity_ids_roundtrip():
    ev = EntityVocab(vocab=500, n_users=3, n_items=4)
    for u in range(3):
        assert ev.token_string(ev.token_id(f"user_{u}")) == f"user_{u}"
        assert ev.token_id(f"user_{u}") == 500 + u
    for i in range(4):
        assert ev.token_id(f"item_{i}") == 503 + i
        assert ev.token_string(503 + i) == f"item_{i}"
    np.testing.assert_array_equal(ev.node_of(np.array([3, 499, 500, 506])), [-1, -1, 0, 6])
    with pytest.raises(ValueError):
        ev.token_id("item_4")
    with pytest.raises(ValueError):
        ev.token_string(499)


def test_content_prompts_text_and_entities(tok):
    items, inter, so = _tables()
    vocab = 512
    assert vocab >= len(tok)
    ev = EntityVocab(vocab, 3, 4)
    ex = build_content_examples(items, inter, so, tok, ev, max_len=64)
    texts = []
    for n in range(len(ex)):
        e = ex[n]
        ids = e["input_ids"]
        p = e["prompt_len"]
        texts.append((KIND_NAMES_BY_CODE[e["kind"]], ev.decode(ids[:p], tok), ev.decode(ids[p:], tok)))
        # the main text never holds entity ids, even with `user_12` / `item_7` in the review
        assert (ids[p:] < vocab).all()
    assert texts == [
        ("review", "user_0 wrote the following review for item_0:", " great product user_12 item_7"),
        ("review", "user_1 wrote the following review for item_1:", " love it"),
        ("review", "user_1 wrote the following review for item_3:", " ok"),
        ("review", "user_2 wrote the following review for item_3:", " fine"),
        ("title", "The title of item_0 is:", " Great Magazine"),
        ("title", "The title of item_3 is:", " Kitchen Monthly"),
        ("brand", "The brand of item_0 is:", " Acme"),
        ("brand", "The brand of item_1 is:", " Acme"),
        ("brand", "The brand of item_3 is:", " Other"),
        ("categories", "The categories of item_0 are:", " Home, Kitchen"),
        ("categories", "The categories of item_3 are:", " Home"),
        ("description", "The description of item_1 is:", " works as described"),
        ("so_brand", "These items item_0, item_1 have the same brand:", " Acme"),
        ("so_category", "These items item_0, item_3 are all in the category:", " Home"),
    ]
    # entity tokens are single ids at the expected places
    first = ex[0]["input_ids"]
    assert first[0] == ev.token_id("user_0")
    assert int((first >= vocab).sum()) == 2
    # the review's text is tokenized exactly as the tokenizer alone would do it
    main = tokenize_texts(tok, [" great product user_12 item_7"])[0]
    np.testing.assert_array_equal(first[ex[0]["prompt_len"] :], main)


KIND_NAMES_BY_CODE = {v: k for k, v in KIND.items()}


def test_cache_roundtrip(tok, tmp_path):
    items, inter, so = _tables()
    ev = EntityVocab(512, 3, 4)
    ex = build_content_examples(items, inter, so, tok, ev, max_len=64)
    ex.save(tmp_path / "content.npz")
    back = Examples.load(tmp_path / "content.npz")
    for k in ("ids", "offsets", "prompt_len", "kind", "uid", "items", "item_offsets"):
        np.testing.assert_array_equal(getattr(ex, k), getattr(back, k))
    both = Examples.concat([ex, build_collab_examples(train_items_by_user(inter, 3), tok, ev, 64)])
    assert len(both) == len(ex) + 3
    np.testing.assert_array_equal(
        both[len(ex)]["input_ids"], build_collab_examples(train_items_by_user(inter, 3), tok, ev, 64)[0]["input_ids"]
    )


def test_collab_and_eval_prompts(tok):
    _, inter, _ = _tables()
    ev = EntityVocab(512, 3, 4)
    tr = train_items_by_user(inter, 3)
    assert [list(t) for t in tr] == [[0, 1], [1, 3], [2, 3]]
    col = build_collab_examples(tr, tok, ev, 64)
    e = col[1]
    p = e["prompt_len"]
    assert ev.decode(e["input_ids"][:p], tok) == "user_1 has interacted with"
    assert ev.decode(e["input_ids"][p:], tok) == "item_1 item_3"
    ev_ex = build_eval_examples(tr, tok, ev, 64)
    e = ev_ex[1]
    assert e["prompt_len"] == len(e["input_ids"])
    assert ev.decode(e["input_ids"], tok) == "user_1 has interacted with item_1 item_3, user_1 will interact with"
    np.testing.assert_array_equal(e["items"], [1, 3])


def test_finetune_draws_seeded_per_user(tok):
    ev = EntityVocab(512, 4, 40)
    rng = np.random.default_rng(0)
    tr = [np.sort(rng.choice(40, size=n, replace=False)) for n in (5, 12, 1, 30)]
    a = build_finetune_examples(tr, tok, ev, 128, seed=3, epoch=1, hide_frac=0.2)
    b = build_finetune_examples(tr, tok, ev, 128, seed=3, epoch=1, hide_frac=0.2)
    c = build_finetune_examples(tr, tok, ev, 128, seed=3, epoch=2, hide_frac=0.2)
    np.testing.assert_array_equal(a.ids, b.ids)
    assert not np.array_equal(a.ids, c.ids)
    for u, items in enumerate(tr):
        e = a[u]
        ids = e["input_ids"]
        kept = ev.node_of(ids)[(ids >= ev.vocab + ev.n_users)] - ev.n_users
        n_hide = max(1, int(0.2 * len(items)))
        assert len(kept) == len(items) - n_hide
        assert set(kept) <= set(items)
        np.testing.assert_array_equal(e["items"], items)
        assert ids[0] == ev.token_id(f"user_{u}") and (ids == ev.token_id(f"user_{u}")).sum() == 2
        # matches the documented generator: hide the first n_hide of a permutation
        g = np.random.default_rng([3, 1, u])
        np.testing.assert_array_equal(kept, g.permutation(items)[n_hide:])
    # a user's draw does not depend on the other users
    alone = build_finetune_examples([np.zeros(0, np.int64)] * 3 + [tr[3]], tok, ev, 128, seed=3, epoch=1, hide_frac=0.2)
    np.testing.assert_array_equal(alone[0]["input_ids"], a[3]["input_ids"])


def test_truncation_keeps_template(tok):
    ev = EntityVocab(512, 2, 100)
    tr = [np.arange(0, 100, 2), np.arange(5)]
    max_len = 20
    fixed = len(build_eval_examples([np.zeros(0, np.int64)], tok, ev, max_len)[0]["input_ids"])
    finetune = build_finetune_examples(tr, tok, ev, max_len, 0, 0, hide_frac=0.2)
    for ex in (build_eval_examples(tr, tok, ev, max_len), finetune):
        ids = ex[0]["input_ids"]
        assert len(ids) == max_len
        text = ev.decode(ids, tok)
        assert text.startswith("user_0 has interacted with") and text.endswith(", user_0 will interact with")
        kept = ev.node_of(ids)[ids >= ev.vocab + ev.n_users] - ev.n_users
        assert len(kept) == max_len - fixed
        assert set(kept) <= set(tr[0])
    kept_eval = ev.node_of(build_eval_examples(tr, tok, ev, max_len)[0]["input_ids"]) - ev.n_users
    kept_eval = kept_eval[kept_eval >= 0]
    assert (np.diff(kept_eval) > 0).all()  # ascending order survives the drop
    col = build_collab_examples(tr, tok, ev, max_len)
    e = col[0]
    assert len(e["input_ids"]) == max_len
    main = e["input_ids"][e["prompt_len"] :] - ev.vocab - ev.n_users
    assert (np.diff(main) > 0).all() and set(main) <= set(tr[0])
    # long review: main cut at the tail
    items = pd.DataFrame({"iid": [0], "title": [None]})
    inter = pd.DataFrame(
        {"uid": [0], "iid": [0], "split": ["train"], "review_text": [" ".join(["great product"] * 40)]}
    )
    ex = build_content_examples(items, inter, None, tok, EntityVocab(512, 1, 1), max_len=16)
    e = ex[0]
    full = tokenize_texts(tok, [" " + inter["review_text"][0]])[0]
    assert len(e["input_ids"]) == 16
    np.testing.assert_array_equal(e["input_ids"][e["prompt_len"] :], full[: 16 - e["prompt_len"]])
    # long second-order prompt: items dropped (seeded), template and value kept
    so = pd.DataFrame({"kind": ["brand"], "value": ["Acme"], "item_ids": [list(range(30))]})
    ex = build_content_examples(pd.DataFrame({"iid": []}), inter.iloc[:0], so, tok, ev, max_len=24)
    text = ev.decode(ex[0]["input_ids"], tok)
    assert len(ex[0]["input_ids"]) <= 24
    assert text.startswith("These items item_") and text.endswith(" have the same brand: Acme")
    ex2 = build_content_examples(pd.DataFrame({"iid": []}), inter.iloc[:0], so, tok, ev, max_len=24)
    np.testing.assert_array_equal(ex.ids, ex2.ids)


def test_tokenizer_learns_the_template_words(tmp_path):
    """A dataset whose only texts are category names (Amazon Beauty) still gets whole-word
    template tokens: without the templates in the corpus " has interacted with" is spelled
    letter by letter, and every fine-tuning prompt carries two such templates."""
    items = pd.DataFrame(
        {"iid": range(4), "categories": [["Skin Care", "Face"], ["Hair Care"], ["Skin Care"], ["Nails", "Tools"]]}
    )
    inter = pd.DataFrame(
        {"uid": [0, 0, 1, 2], "iid": [0, 1, 2, 3], "split": ["train", "train", "train", "val"], "review_text": None}
    )
    corpus = tokenizer_corpus(items, inter)
    with_templates = train_bpe_tokenizer(corpus, tmp_path / "with", vocab_size=2000)
    for text in TEMPLATE_TEXTS:
        words = text.replace(":", " :").split()
        assert len(with_templates.tokenize(text)) == len(words), text
    assert with_templates.tokenize(HAS_INTERACTED) == ["\u0120has", "\u0120interacted", "\u0120with"]
    # The check can fail: the same texts without the templates spell the words out.
    without = train_bpe_tokenizer([t for t in corpus if t not in TEMPLATE_TEXTS], tmp_path / "without", 2000)
    assert len(without.tokenize(HAS_INTERACTED)) > 10
