"""Peak memory of one call: bytes of storage it holds at its worst moment, including what views keep alive.

CPU: ``StorageTracker`` follows tensor *storages*, not tensor objects. It counts the storage of every tensor an
op creates (outputs that alias an input's storage, i.e. views and in-place results, add nothing) and
uncounts it only when the storage itself is freed, so a small view that keeps a large storage alive keeps
all of it counted. NumPy buffers are counted with ``tracemalloc``. CUDA: ``torch.cuda.max_memory_allocated``
over what was allocated before the call.
"""

from __future__ import annotations

import tracemalloc
import weakref
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def _storages(tree) -> list[torch.UntypedStorage]:
    return [t.untyped_storage() for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor) and t.device.type == "cpu"]


class StorageTracker(TorchDispatchMode):
    """Live and peak bytes of CPU tensor storage created while the mode is active."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._alive: dict[int, int] = {}  # id of a live storage -> bytes

    def _free(self, key: int) -> None:
        self.live -= self._alive.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {s.data_ptr() for s in _storages((args, kwargs)) if s.nbytes()}
        for storage in _storages(out):
            nbytes = storage.nbytes()
            if not nbytes or storage.data_ptr() in inputs:
                continue
            key = id(storage)
            if key not in self._alive:
                self._alive[key] = nbytes
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._free, key)
        return out


def peak_bytes(fn: Callable[[], object], device: torch.device) -> tuple[int, object]:
    """Peak bytes held during ``fn()`` beyond what existed before it (its result included), and the result."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        result = fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, result
    tracemalloc.start()
    try:
        with StorageTracker() as tracker:
            result = fn()
        _, numpy_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return tracker.peak + numpy_peak, result
