"""Bring-your-own data: tables already in the canonical schema (README, "Bring your own data").

A `local` dataset skips download and convert; this module reads its tables (parquet, CSV or
JSON lines), checks the columns, and writes the same interim files convert writes. Rows
without a user, item or finite rating are set aside in ``rejects.jsonl``, as convert does.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pandas as pd

REVIEW_COLUMNS = {"user_id": "required", "item_id": "required", "rating": "required",
                  "timestamp": "optional", "review_text": "optional", "summary": "optional"}
ITEM_COLUMNS = {"item_id": "required", "title": "optional", "brand": "optional",
                "categories": "optional", "description": "optional"}


class SchemaError(ValueError):
    """A local table lacks a required column or has an unreadable format."""


def read_table(path: Path) -> pd.DataFrame:
    """Read parquet, CSV/TSV or JSON lines by file name."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".parquet"):
        return pd.read_parquet(path)
    if name.endswith((".csv", ".csv.gz")):
        return pd.read_csv(path, dtype={"user_id": str, "item_id": str}, keep_default_na=False, na_values=[""])
    if name.endswith((".tsv", ".tsv.gz")):
        return pd.read_csv(path, sep="\t", dtype={"user_id": str, "item_id": str}, keep_default_na=False, na_values=[""])
    if name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")):
        return pd.read_json(path, lines=True, dtype={"user_id": str, "item_id": str})
    raise SchemaError(f"{path}: unknown table format (use .parquet, .csv, .tsv or .jsonl)")


def _check_columns(df: pd.DataFrame, spec: dict, path: Path) -> None:
    missing = [c for c, kind in spec.items() if kind == "required" and c not in df.columns]
    if missing:
        raise SchemaError(f"{path}: missing required column(s) {missing}; found {list(df.columns)}. "
                          "See the README section 'Bring your own data'.")


def _categories(value: object) -> list[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("["):
            try:
                parsed = ast.literal_eval(s)
                return [str(v) for v in parsed] if isinstance(parsed, (list, tuple)) else [s]
            except (ValueError, SyntaxError, RecursionError, MemoryError):
                return [s]
        return [p for p in s.split("|") if p]
    return [str(v) for v in value]


def import_local(reviews_path: Path, items_path: Path, out_dir: Path, max_reject_frac: float = 0.01) -> dict:
    """Validate and copy local tables to ``out_dir``'s interim files; returns the counts."""
    reviews_path, items_path, out_dir = Path(reviews_path), Path(items_path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reviews = read_table(reviews_path)
    _check_columns(reviews, REVIEW_COLUMNS, reviews_path)
    reviews.insert(0, "line", np.arange(1, len(reviews) + 1, dtype=np.int64))
    rating = pd.to_numeric(reviews["rating"], errors="coerce")
    reasons = np.select(
        [reviews["user_id"].isna(), reviews["item_id"].isna(), ~np.isfinite(rating.to_numpy(float))],
        ["missing user_id", "missing item_id", "rating is not a finite number"], default="")
    bad = reasons != ""
    with open(out_dir / "rejects.jsonl", "w") as fh:
        for line, reason, row in zip(reviews["line"][bad], reasons[bad], reviews[bad].astype(str).to_dict("records")):
            fh.write(json.dumps({"file": "reviews", "line": int(line), "reason": reason,
                                 "text": json.dumps(row)[:200]}) + "\n")
    good = reviews[~bad].copy()
    good["rating"] = rating[~bad].astype(np.float64)
    good["user_id"] = good["user_id"].astype(str)
    good["item_id"] = good["item_id"].astype(str)
    good["timestamp"] = (pd.to_numeric(good["timestamp"], errors="coerce").astype("Int64")
                         if "timestamp" in good else pd.array([pd.NA] * len(good), dtype="Int64"))
    for col in ("review_text", "summary"):
        good[col] = good[col].astype("string") if col in good else pd.array([None] * len(good), dtype="string")
    good[["line", *REVIEW_COLUMNS]].to_parquet(out_dir / "reviews.parquet", index=False)

    items = read_table(items_path)
    _check_columns(items, ITEM_COLUMNS, items_path)
    items.insert(0, "line", np.arange(1, len(items) + 1, dtype=np.int64))
    items = items[items["item_id"].notna()].copy()
    items["item_id"] = items["item_id"].astype(str)
    for col in ("title", "brand", "description"):
        items[col] = items[col].astype("string") if col in items else pd.array([None] * len(items), dtype="string")
    items["categories"] = [_categories(v) for v in items["categories"]] if "categories" in items \
        else [[] for _ in range(len(items))]
    items[["line", *ITEM_COLUMNS]].to_parquet(out_dir / "items.parquet", index=False)

    report = {"reviews": {"lines": int(len(reviews)), "rows": int(len(good)), "rejected": int(bad.sum())},
              "meta": {"lines": int(len(items)), "rows": int(len(items)), "rejected": 0},
              "max_reject_frac": max_reject_frac, "source": "local"}
    (out_dir / "convert.json").write_text(json.dumps(report, indent=2) + "\n")
    if len(reviews) and bad.sum() / len(reviews) > max_reject_frac:
        raise SchemaError(f"{reviews_path}: {bad.sum()} of {len(reviews)} rows rejected "
                          f"(more than convert.max_reject_frac={max_reject_frac}); see {out_dir / 'rejects.jsonl'}")
    return report
