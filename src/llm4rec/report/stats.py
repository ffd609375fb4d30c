"""Paired statistics over per-user metrics: per-user means across seeds, Wilcoxon tests."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd


def per_user_mean(frames: Sequence[pd.DataFrame], metric: str = "Recall@20") -> pd.Series:
    """Each user's ``metric`` averaged over replicates (index uid); users of every replicate only."""
    if not frames:
        raise ValueError("no per-user tables")
    wide = pd.concat([f.set_index("uid")[metric].rename(n) for n, f in enumerate(frames)], axis=1, join="inner")
    return wide.mean(axis=1).sort_index()


def paired_wilcoxon(
    per_user: Mapping[str, Sequence[pd.DataFrame]],
    reference: str = "full",
    metric: str = "Recall@20",
    methods: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Two-sided paired Wilcoxon signed-rank test of ``reference`` against every other method.

    Pairs are users evaluated by both; each user's value is first averaged over the method's
    seeds. Zero differences are dropped (scipy's default ``zero_method="wilcox"``); when all
    differences are zero there is nothing to test and the p-value is NaN.
    """
    import scipy.stats

    if reference not in per_user:
        raise ValueError(f"reference method {reference!r} has no per-user results")
    ref = per_user_mean(per_user[reference], metric)
    rows = []
    for name in methods if methods is not None else [m for m in per_user if m != reference]:
        other = per_user_mean(per_user[name], metric)
        a, b = ref.align(other, join="inner")
        diff = (a - b).to_numpy()
        nonzero = int(np.count_nonzero(diff))
        if nonzero == 0:
            stat, p = math.nan, math.nan
        else:
            res = scipy.stats.wilcoxon(a.to_numpy(), b.to_numpy(), alternative="two-sided")
            stat, p = float(res.statistic), float(res.pvalue)
        rows.append(
            {
                "method": name,
                "reference": reference,
                "metric": metric,
                "n_users": int(diff.size),
                "n_nonzero": nonzero,
                "mean_reference": float(a.mean()) if a.size else math.nan,
                "mean_method": float(b.mean()) if b.size else math.nan,
                "mean_diff": float(diff.mean()) if diff.size else math.nan,
                "statistic": stat,
                "p_value": p,
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "method",
            "reference",
            "metric",
            "n_users",
            "n_nonzero",
            "mean_reference",
            "mean_method",
            "mean_diff",
            "statistic",
            "p_value",
        ],
    )
