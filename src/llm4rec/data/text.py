"""Cleaning of free-text fields (docs/method.md 2.3): one rule for every field."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable

_TAG = re.compile(r"</?[A-Za-z!][^<>]*>")

# A tag cut off before its closing '>' (real 2018 titles read '<span class="a-size-medium ...').
_OPEN_FRAGMENT = re.compile(r"<[A-Za-z/!][^<>]*$")
_SPACE = re.compile(r"\s+")


def clean_text(value: object) -> str | None:
    """Join list items, strip HTML tags and fragments, unescape entities, collapse whitespace.

    Returns None when nothing is left, so an empty field yields no prompt. Entities are
    unescaped after tag stripping and once more afterwards, because real files carry
    doubly escaped text such as ``&amp;amp;`` and escaped tags such as ``&lt;br&gt;``.
    """
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN from pandas
        return None
    if isinstance(value, (list, tuple)) or (hasattr(value, "tolist") and not isinstance(value, str)):
        items = value.tolist() if hasattr(value, "tolist") else value
        value = " ".join(str(v) for v in items if v is not None)
    text = str(value)
    for _ in range(2):
        text = _TAG.sub(" ", text)
        text = _OPEN_FRAGMENT.sub(" ", text)
        text = html.unescape(text)
    text = _SPACE.sub(" ", text).strip()
    return text or None


def clean_list(values: Iterable[object] | None) -> list[str]:
    """Clean each entry of a list field (categories) and drop the ones left empty."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    out = []
    for v in values:
        c = clean_text(v)
        if c is not None:
            out.append(c)
    return out
