"""Peak memory of one call, and the resident memory a load leaves behind.

Peak memory of one call: bytes of storage it holds at its worst moment, including what views keep alive.

CPU: ``StorageTracker`` follows tensor *storages*, not tensor objects. It counts the storage of every tensor an
op creates (outputs that alias an input's storage, i.e. views and in-place results, add nothing) and
uncounts it only when the storage itself is freed, so a small view that keeps a large storage alive keeps
all of it counted. NumPy buffers are counted with ``tracemalloc``. CUDA: ``torch.cuda.max_memory_allocated``
over what was allocated before the call.

Resident memory of a load (``measure_load``): the growth of the process's RSS from after the imports to after
the model is loaded, each loader in a fresh Python process, so that the two loaders of a comparison share
nothing (``load_memory_rows`` in suites.py puts them side by side).
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
import weakref
from collections.abc import Callable

import open_clip
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from vit_lens_clip.loading import load_clip


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


# ------------------------------------------------------------------------------------------- resident memory
LOADERS = ("open_clip create_model_and_transforms", "load_clip")


def rss_bytes() -> int:
    """This process's resident set size (Linux ``/proc/self/status``; 0 where that file does not exist)."""
    try:
        with open("/proc/self/status") as status:
            line = next(l for l in status if l.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0
    return int(line.split()[1]) * 1024


def probe_load(arch: str, loader: str, out: str, seed: int = 0) -> None:
    """In a fresh process: RSS grown by loading ``arch`` with random weights in float32 (after the imports), the
    load's wall and CPU seconds, and the unnormalised embeddings of one seeded batch, written to ``out``
    (``torch.save``). ``loader``: one of ``LOADERS``; both draw the same weights from the same seed."""
    gc.collect()
    before = rss_bytes()
    torch.manual_seed(seed)  # both loaders draw the same random weights from the same generator state
    start, cpu_start = time.perf_counter(), time.process_time()
    if loader == LOADERS[0]:
        model, _, _ = open_clip.create_model_and_transforms(arch, pretrained=None)
        model.eval()
        encode = model.encode_image
        size = model.visual.image_size
    elif loader == LOADERS[1]:
        loaded = load_clip(arch)
        encode = lambda x: loaded.encode_image(x, normalize=False)
        size = loaded.model.cfg.image_size
    else:
        raise ValueError(f"loader must be one of {LOADERS}, got {loader!r}")
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    gc.collect()
    grown = rss_bytes() - before
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        y = encode(x).float()
    torch.save({"rss": grown, "seconds": seconds, "cpu_seconds": cpu_seconds, "embedding": y}, out)


def measure_load(arch: str, loader: str, seed: int = 0) -> dict:
    """``probe_load`` in a fresh Python process (so that nothing loaded before counts); its record."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "probe.pt")
        code = (f"from vit_lens_clip.app.benchmarks.memory import probe_load; "
                f"probe_load({arch!r}, {loader!r}, {out!r}, {seed})")
        subprocess.run([sys.executable, "-c", code], check=True)
        return torch.load(out, weights_only=True)
