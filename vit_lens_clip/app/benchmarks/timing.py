"""CPU time and wall time per call, contenders interleaved, with the thread counts pinned and recorded.

CPU time is the process's CPU time across all its threads (``time.process_time``), so with the thread counts
pinned it does not depend on what else runs on the machine; wall time does. On CUDA the device is
synchronised around every call and wall time is the figure that counts.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from threadpoolctl import threadpool_info, threadpool_limits


@dataclass
class Timing:
    """Per-call CPU and wall seconds of one contender, one entry per repeat."""

    cpu_s: list[float]
    wall_s: list[float]

    @property
    def cpu_min(self) -> float:
        return min(self.cpu_s)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_s)

    @property
    def wall_min(self) -> float:
        return min(self.wall_s)

    @property
    def wall_median(self) -> float:
        return statistics.median(self.wall_s)


@contextlib.contextmanager
def pinned_threads(n_threads: int) -> Iterator[dict]:
    """Pin torch's intra-op threads and every BLAS/OpenMP pool (threadpoolctl) to n_threads; yields what is set."""

    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        with threadpool_limits(n_threads):
            pools = sorted({f"{p['internal_api']}={p['num_threads']}" for p in threadpool_info()})
            yield {"torch": torch.get_num_threads(), "pools": pools}
    finally:
        torch.set_num_threads(previous)


def time_interleaved(
    contenders: dict[str, Callable[[], object]], device: torch.device, repeats: int = 3, warmup: int = 1
) -> dict[str, Timing]:
    """Call the contenders in turn (A, B, C, A, B, C, ...) ``repeats`` times after ``warmup`` untimed rounds."""
    if repeats < 3:
        warnings.warn(f"only {repeats} repeat(s): min and median are not reliable (use at least 3)", stacklevel=2)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    timings = {name: Timing([], []) for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            sync()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            fn()
            sync()
            timings[name].cpu_s.append(time.process_time() - cpu0)
            timings[name].wall_s.append(time.perf_counter() - wall0)
    return timings
