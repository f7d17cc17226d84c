"""'Did you mean' for names the user typed: the nearest entries of a real list (open_clip's models, a model's
pretrained tags, timm's models), compared without case and with ``/`` and ``_`` read as ``-``."""

from __future__ import annotations

import difflib
from typing import Iterable


def _folded(name: str) -> str:
    return name.lower().replace("/", "-").replace("_", "-")


def nearest(name: str, candidates: Iterable[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """Up to ``n`` candidates closest to ``name``, best first (an exact match up to case and separators first)."""
    by_folded: dict[str, str] = {}
    for candidate in candidates:
        by_folded.setdefault(_folded(candidate), candidate)
    folded = _folded(name)
    if folded in by_folded:
        return [by_folded[folded]]
    return [by_folded[m] for m in difflib.get_close_matches(folded, list(by_folded), n=n, cutoff=cutoff)]


def did_you_mean(suggestions: Iterable[str]) -> str:
    """``" (did you mean 'a' or 'b'?)"``, or an empty string without suggestions."""
    quoted = [repr(s) for s in suggestions]
    if not quoted:
        return ""
    return f" (did you mean {' or '.join(quoted)}?)"
