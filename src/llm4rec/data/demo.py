"""Deterministic synthetic data in the raw Amazon 2018 format.

Users have latent tastes over sub-categories and brands; items belong to one sub-category
and one brand; review texts are made from the item's words. So the collaborative signal
(who buys what), the graph (items sharing users) and the texts (brand, category, title) all
carry the same structure, and later stages have something to learn. The small committed demo
(`resources/demo/`) and the Amazon-Beauty-sized benchmark data come from the same code.

Once the demo files are committed, the settings in ``DEMO`` change only with a note in the
README saying why: later tests judge learning on them.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROOT_CATEGORY = "Demo Beauty"
NOUNS_BY_CATEGORY = {
    "Skin Care": ["cleanser", "serum", "moisturizer", "toner", "face mask", "sunscreen", "eye cream"],
    "Hair Care": ["shampoo", "conditioner", "hair oil", "styling gel", "dry shampoo", "hair mask"],
    "Makeup": ["lipstick", "mascara", "foundation", "eyeliner", "blush", "concealer", "highlighter"],
    "Fragrance": ["perfume", "body mist", "cologne", "eau de toilette"],
    "Bath & Body": ["body wash", "bath salts", "body lotion", "body scrub", "hand cream", "lip balm"],
    "Tools & Accessories": ["brush set", "hair dryer", "nail file", "makeup sponge", "hair straightener"],
}
TOP_CATEGORIES = list(NOUNS_BY_CATEGORY)
NOUNS = [n for nouns in NOUNS_BY_CATEGORY.values() for n in nouns]
NOUN_TOP = [t for t, nouns in enumerate(NOUNS_BY_CATEGORY.values()) for _ in nouns]
ADJECTIVES = [
    "gentle",
    "hydrating",
    "matte",
    "radiant",
    "fresh",
    "classic",
    "organic",
    "silky",
    "ultra",
    "daily",
    "soothing",
    "volumizing",
    "long-lasting",
    "lightweight",
    "rich",
    "clarifying",
    "nourishing",
    "botanical",
    "velvet",
    "pure",
]
SCENTS = [
    "lavender",
    "citrus",
    "rose",
    "vanilla",
    "mint",
    "coconut",
    "sandalwood",
    "unscented",
    "jasmine",
    "green tea",
    "cucumber",
    "almond",
]
BRAND_A = [
    "Luna",
    "Vera",
    "Nord",
    "Aurel",
    "Bloom",
    "Cedar",
    "Iris",
    "Sol",
    "Opal",
    "Maris",
    "Terra",
    "Willow",
    "Coral",
    "Ember",
    "Haven",
    "Jade",
    "Kira",
    "Lumen",
    "Mira",
    "Nova",
]
BRAND_B = ["Labs", "Botanics", "Beauty", "Naturals", "Cosmetics", "& Co", "Studio", "Essentials"]
PRAISE = [
    "Works great",
    "Love it",
    "Exactly what I needed",
    "Really nice",
    "Very happy with it",
    "Does the job",
    "Would buy again",
    "Better than expected",
]
COMPLAINT = ["Not for me", "Disappointed", "Broke quickly", "Smell was off", "Too pricey for what it is"]


@dataclass(frozen=True)
class DemoSettings:
    n_users: int = 400
    n_items: int = 250
    n_reviews: int = 5000
    seed: int = 20240215
    items_per_cluster: int = 25
    taste_concentration: float = 0.15
    brand_loyalty: float = 0.35
    malformed: bool = True


DEMO = DemoSettings()


def _catalogue(s: DemoSettings, rng: np.random.Generator) -> pd.DataFrame:
    n_clusters = max(4, s.n_items // s.items_per_cluster)
    cluster = np.sort(rng.integers(0, n_clusters, s.n_items))
    cluster_noun = rng.permutation(np.resize(np.arange(len(NOUNS)), max(n_clusters, len(NOUNS))))[:n_clusters]
    cluster_top = np.asarray(NOUN_TOP)[cluster_noun]
    n_brands = max(3, s.n_items // 8)
    brand_home = rng.integers(0, n_clusters, n_brands)
    brand_names = [
        f"{BRAND_A[b % len(BRAND_A)]} {BRAND_B[(b // len(BRAND_A)) % len(BRAND_B)]}"
        + (f" {b // (len(BRAND_A) * len(BRAND_B)) + 1}" if b >= len(BRAND_A) * len(BRAND_B) else "")
        for b in range(n_brands)
    ]
    # Brands specialise: 80% of an item's brand comes from brands at home in its cluster.
    brand = np.empty(s.n_items, dtype=np.int64)
    for c in range(n_clusters):
        members = np.flatnonzero(cluster == c)
        home = np.flatnonzero(brand_home == c)
        pool = home if len(home) else np.arange(n_brands)
        local = rng.random(len(members)) < 0.8
        brand[members] = np.where(local, rng.choice(pool, len(members)), rng.integers(0, n_brands, len(members)))
    adjective = rng.integers(0, len(ADJECTIVES), s.n_items)
    scent = rng.integers(0, len(SCENTS), s.n_items)
    popularity = rng.pareto(1.2, s.n_items) + 1.0
    asin = [f"D{n:09d}" for n in rng.permutation(10**6)[: s.n_items] + 10**8]
    return pd.DataFrame(
        {
            "asin": asin,
            "cluster": cluster,
            "top": cluster_top[cluster],
            "noun": cluster_noun[cluster],
            "brand": brand,
            "brand_name": np.asarray(brand_names, dtype=object)[brand],
            "adjective": adjective,
            "scent": scent,
            "popularity": popularity,
        }
    )


def _item_title(row) -> str:
    return f"{row.brand_name} {ADJECTIVES[row.adjective].title()} {SCENTS[row.scent].title()} {NOUNS[row.noun].title()}"


def generate_interactions(s: DemoSettings = DEMO) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sample (items, reviews) tables; vectorized so Beauty-sized data takes seconds."""
    rng = np.random.default_rng(s.seed)
    items = _catalogue(s, rng)
    n_clusters = int(items["cluster"].max()) + 1
    n_brands = int(items["brand"].max()) + 1
    taste = rng.dirichlet(np.full(n_clusters, s.taste_concentration), s.n_users)
    fav_brand = rng.integers(0, n_brands, s.n_users)

    # Reviews per user: at least 5, geometric tail to reach the requested mean.
    extra_mean = max(s.n_reviews / s.n_users - 5.0, 0.5)
    per_user = 5 + rng.geometric(1.0 / (extra_mean + 1.0), s.n_users) - 1
    # Oversample to make up for repeated draws removed below.
    draws = np.repeat(np.arange(s.n_users), (per_user * 1.4).astype(int) + 2)
    cum_taste = np.cumsum(taste, axis=1)
    # Inverse CDF per draw over the user's taste row, without a draws x clusters matrix.
    cum_taste[:, -1] = 1.0
    flat = (cum_taste + np.arange(s.n_users)[:, None]).ravel()
    pos = np.searchsorted(flat, draws + rng.random(len(draws)), side="right")
    c = np.minimum(pos - draws * n_clusters, n_clusters - 1)
    # Item within the cluster by popularity (inverse CDF over the concatenated clusters).
    order = np.argsort(items["cluster"].to_numpy(), kind="stable")
    pop = items["popularity"].to_numpy()[order]
    cl = items["cluster"].to_numpy()[order]
    start = np.searchsorted(cl, np.arange(n_clusters))
    end = np.searchsorted(cl, np.arange(n_clusters), side="right")
    cum = np.cumsum(pop)
    base = np.where(start > 0, cum[start - 1], 0.0)
    empty = start == end
    span = np.where(empty, 0.0, cum[np.maximum(end - 1, 0)] - base)
    target = base[c] + rng.random(len(draws)) * span[c]
    pick = order[np.minimum(np.searchsorted(cum, target, side="right"), len(cum) - 1)]
    # Brand loyalty: some draws go to the user's favourite brand instead.
    brand_order = np.argsort(items["brand"].to_numpy(), kind="stable")
    brand_start = np.searchsorted(items["brand"].to_numpy()[brand_order], np.arange(n_brands))
    brand_count = np.bincount(items["brand"].to_numpy(), minlength=n_brands)
    loyal = rng.random(len(draws)) < s.brand_loyalty
    fb = fav_brand[draws]
    loyal &= brand_count[fb] > 0
    k = rng.integers(0, 1 << 30, len(draws)) % np.maximum(brand_count[fb], 1)
    pick = np.where(loyal, brand_order[np.minimum(brand_start[fb] + k, s.n_items - 1)], pick)
    reviews = pd.DataFrame({"user": draws, "item": pick})
    reviews = reviews.drop_duplicates(["user", "item"])
    reviews["rank"] = reviews.groupby("user").cumcount()
    reviews = reviews[reviews["rank"] < per_user[reviews["user"].to_numpy()]].drop(columns="rank")
    n = len(reviews)
    # Whole-day timestamps: same-day reviews are common, as in the real files.
    start_day = rng.integers(14610, 17530, s.n_users)  # 2010-01-01 .. 2017-12-31
    gaps = rng.exponential(25.0, n).round().astype(np.int64)
    day = start_day[reviews["user"].to_numpy()] + reviews.assign(g=gaps).groupby("user")["g"].cumsum().to_numpy()
    reviews["timestamp"] = day * 86400
    reviews["rating"] = rng.choice([5.0, 4.0, 3.0, 2.0, 1.0], n, p=[0.56, 0.28, 0.08, 0.03, 0.05])
    # File order: roughly by time, as the real dumps (sorted by item, then time) are not.
    reviews = reviews.sample(frac=1.0, random_state=int(rng.integers(1 << 31))).reset_index(drop=True)
    return items, reviews


def _review_text(item, rating: float, rng: np.random.Generator) -> tuple[str, str]:
    noun, adj, scent = NOUNS[item.noun], ADJECTIVES[item.adjective], SCENTS[item.scent]
    good = rating >= 4
    summary = PRAISE[rng.integers(len(PRAISE))] if good else COMPLAINT[rng.integers(len(COMPLAINT))]
    feel = "love" if good else "did not like"
    text = (
        f"I {feel} this {adj} {noun} from {item.brand_name}. The {scent} scent is "
        f"{'lovely' if good else 'too strong'} and it works {'well' if good else 'poorly'} "
        f"for my {TOP_CATEGORIES[item.top].lower()} routine."
    )
    return text, summary


def write_raw(directory: Path, s: DemoSettings = DEMO) -> dict[str, Path]:
    """Write ``reviews.json.gz`` and ``meta.json.gz`` (byte-identical for the same settings)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    items, reviews = generate_interactions(s)
    rng = np.random.default_rng(s.seed + 1)
    users = [f"U{n:012d}" for n in rng.permutation(10**7)[: s.n_users] + 10**9]
    item_rows = list(items.itertuples(index=False))

    lines = []
    for r in reviews.itertuples(index=False):
        it = item_rows[r.item]
        text, summary = _review_text(it, r.rating, rng)
        ts = int(r.timestamp)
        rec = {
            # Like the circulating re-exports, some numbers arrive as strings.
            "overall": f"{r.rating:.1f}" if rng.random() < 0.3 else float(r.rating),
            "verified": "True" if rng.random() < 0.5 else True,
            "reviewTime": pd.Timestamp(ts, unit="s").strftime("%m %d, %Y"),
            "reviewerID": users[r.user],
            "asin": it.asin,
            "reviewText": text,
            "summary": summary,
            "unixReviewTime": str(ts) if rng.random() < 0.3 else ts,
        }
        lines.append(json.dumps(rec))
    if s.malformed:
        n = len(lines)
        dup_at = rng.choice(n, max(3, n // 500), replace=False)
        for k in sorted(dup_at, reverse=True):  # a few repeated user-item pairs
            rec = json.loads(lines[k])
            rec["unixReviewTime"] = int(rec["unixReviewTime"]) + 86400 * int(rng.integers(0, 30))
            rec["overall"] = 5.0
            lines.insert(min(n, k + int(rng.integers(1, 200))), json.dumps(rec))
        bad = [
            '{"overall": 5.0, "reviewerID": "U000000000001", "asin": "D1',
            '{"overall": 4.0, "reviewText": "no reviewer or item here"}',
            '{"overall": "five stars", "reviewerID": "U000000000002", "asin": "D000000002"}',
            "not json at all",
        ]
        for k, b in zip(rng.choice(len(lines), len(bad), replace=False), bad):
            lines.insert(int(k), b)
    _write_gz(directory / "reviews.json.gz", lines)

    meta = []
    for it in item_rows:
        title = _item_title(it)
        if rng.random() < 0.1:  # leftover HTML, as in real titles
            title = f'<span class="a-size-medium a-color-secondary">{title}</span>'
        desc = [
            f"This {ADJECTIVES[it.adjective]} {NOUNS[it.noun]} has a {SCENTS[it.scent]} scent and is made by "
            f"{it.brand_name}. <br>Made for your {TOP_CATEGORIES[it.top].lower()} routine &amp; everyday use.",
            "",
        ]
        meta.append(
            {
                "asin": it.asin,
                "title": title,
                "brand": it.brand_name,
                "category": [ROOT_CATEGORY, TOP_CATEGORIES[it.top], NOUNS[it.noun].title()],
                "description": desc,
                "main_cat": ROOT_CATEGORY,
            }
        )
    meta_lines = [json.dumps(m) for m in meta]
    if s.malformed:
        # A repeated record (the last one wins) and a broken line.
        again = dict(meta[0], title=meta[0]["title"] + " (New)")
        meta_lines.insert(len(meta_lines) // 2, json.dumps(meta[1]))
        meta_lines.append(json.dumps(again))
        meta_lines.insert(len(meta_lines) // 3, '{"asin": "D999999999", "title": "truncated')
    _write_gz(directory / "meta.json.gz", meta_lines)
    return {"reviews": directory / "reviews.json.gz", "meta": directory / "meta.json.gz"}


def _write_gz(path: Path, lines: list[str]) -> None:
    data = ("\n".join(lines) + "\n").encode()
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        f.write(data)


def beauty_sized(scale: int = 1, seed: int = 7) -> DemoSettings:
    """Settings the size of Amazon Beauty (about 22k users, 12k items and 150k train edges after
    preprocessing), times ``scale``."""
    return DemoSettings(
        n_users=22000 * scale,
        n_items=12000 * scale,
        n_reviews=250000 * scale,
        seed=seed,
        items_per_cluster=60,
        malformed=False,
    )


def processed_interactions(s: DemoSettings) -> dict:
    """Generated reviews through the real preprocess (no texts): for benchmarks of later stages."""
    from llm4rec.data.preprocess import preprocess

    items, reviews = generate_interactions(s)
    raw = pd.DataFrame(
        {
            "line": np.arange(1, len(reviews) + 1),
            "user_id": reviews["user"].astype(str),
            "item_id": items["asin"].to_numpy()[reviews["item"].to_numpy()],
            "rating": reviews["rating"].to_numpy(),
            "timestamp": reviews["timestamp"].to_numpy(),
        }
    )
    meta = pd.DataFrame(
        {
            "line": np.arange(1, len(items) + 1),
            "item_id": items["asin"],
            "brand": items["brand_name"],
            "categories": [
                [ROOT_CATEGORY, TOP_CATEGORIES[t], NOUNS[n].title()] for t, n in zip(items["top"], items["noun"])
            ],
        }
    )
    return preprocess(raw, meta)
