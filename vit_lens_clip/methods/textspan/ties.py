"""How TextSpan decides that two text scores are tied.

A text's score (std over images of C t) counts as tied with the best score when it is within
``tie_rtol * scale`` of it, where scale = sqrt(|C - mean(C)|_F^2 / n) is the head's overall spread (no unit
text can score above it). Among tied texts the lowest index wins. The tolerance is far above the rounding error
of either implementation and far below any difference that means something, so the reference and the batched
code pick the same texts, duplicate texts resolve the same way on every run and device, and once a head's
variance is used up (all scores are rounding noise) the remaining picks are the lowest indices, not noise.
"""

from __future__ import annotations

_DEFAULT_TIE_RTOL = {"float64": 1e-10, "float32": 1e-5}


def default_tie_rtol(dtype_name: str) -> float:
    """Default relative tie tolerance for a floating dtype name ("float64" or "float32")."""
    name = str(dtype_name).replace("torch.", "")
    if name not in _DEFAULT_TIE_RTOL:
        raise ValueError(f"TextSpan runs in float64 or float32, not {dtype_name!r}")
    return _DEFAULT_TIE_RTOL[name]

