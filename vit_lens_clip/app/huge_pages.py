"""Transparent huge pages for torch's large tensors, as NumPy uses them for its large arrays by default.

torch advises huge pages only with ``THP_MEM_ALLOC_ENABLE=1``, and reads it once, at its first allocation. So the
command line sets it (unless the user did) before any command imports torch, and records what torch got:
the bench writes that record, not the environment variable, which says nothing once torch has started.
"""

from __future__ import annotations

import os
import sys

VARIABLE = "THP_MEM_ALLOC_ENABLE"
_recorded: list[str] = []


def request_for_torch() -> None:
    """Set ``THP_MEM_ALLOC_ENABLE=1`` unless the user set it, if torch has not started yet; record the outcome."""
    _recorded.clear()
    if "torch" in sys.modules:
        _recorded.append(f"unknown: torch started before the command line ({VARIABLE}={os.environ.get(VARIABLE)})")
        return
    os.environ.setdefault(VARIABLE, "1")
    _recorded.append(os.environ[VARIABLE])


def torch_setting() -> str:
    """What torch got: the value set before it started, or why that is unknown."""
    return _recorded[-1] if _recorded else "unknown: not started from the command line"
