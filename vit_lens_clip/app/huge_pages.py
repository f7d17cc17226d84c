"""What torch got for transparent huge pages (``THP_MEM_ALLOC_ENABLE``), for the bench's record.

torch advises huge pages for its large tensors only with ``THP_MEM_ALLOC_ENABLE=1``, and reads the variable once,
at its first allocation. The command line leaves it as the user set it (unset: off). It used to turn it on for
every run; an A/B of five fresh processes per setting on the idle 2-core machine found no gain (TextSpan 1.009x and
a ViT-B-16 forward 1.018x the CPU time WITH huge pages; docs/performance.md, docs/bench/cpu-huge-pages.json), so
the default is torch's own. ``record_for_torch`` notes, before torch starts, the value it will read; the bench
writes that record, not the environment variable, which says nothing once torch has started.
"""

from __future__ import annotations

import os
import sys

VARIABLE = "THP_MEM_ALLOC_ENABLE"
UNSET = "unset (torch's default: off)"
_recorded: list[str] = []


def record_for_torch() -> None:
    """Record the value torch will read (the user's, or unset) if torch has not started yet; else why it is unknown."""
    _recorded.clear()
    if "torch" in sys.modules:
        _recorded.append(f"unknown: torch started before the command line ({VARIABLE}={os.environ.get(VARIABLE)})")
        return
    _recorded.append(os.environ.get(VARIABLE, UNSET))


def torch_setting() -> str:
    """What torch got: the value recorded before it started, or why that is unknown."""
    return _recorded[-1] if _recorded else "unknown: not started from the command line"
