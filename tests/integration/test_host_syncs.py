"""No host read on the per-batch path: a forward, a decomposition and a collection read nothing back per batch.

On a GPU every host read of a device value (``.item()``, ``bool(t)``, ``.tolist()``, ``.cpu()``, ``float(t)``,
``int(t)``) waits for the device. On the CPU they cost nothing, so they are counted instead: every value read
lowers to ``aten._local_scalar_dense`` (counted by a TorchDispatchMode), and the Python methods are counted by
patching ``torch.Tensor`` (``.cpu()`` of a CPU tensor does no dispatch at all). The GPU counterpart, under
``torch.cuda.set_sync_debug_mode("error")``: ``python -m vit_lens_clip.app.benchmarks.host_syncs``.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections import Counter
from typing import Iterator

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_clip
from torch.utils._python_dispatch import TorchDispatchMode

from vit_lens_clip.app.benchmarks import host_syncs
from vit_lens_clip.datasets.folder import TensorImages
from vit_lens_clip.decompose import reducers
from vit_lens_clip.decompose.parts import DecompositionCapture
from vit_lens_clip.decompose.reducers import MeanReducer, StackReducer, TextScoreReducer, run_reducers
from vit_lens_clip.distributed.collection import CollectionPlan, collect_on_rank
from vit_lens_clip.errors import BadInputError
from vit_lens_clip.model.hooked_vit import HookedViT
from vit_lens_clip.validation import deferred_checks

READS = ("item", "tolist", "cpu", "__bool__", "__float__", "__int__")


class HostReads(TorchDispatchMode):
    """Counts ``aten._local_scalar_dense`` (every read of a tensor's value on the host)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter]:
    """Inside: every host read, by kind ('_local_scalar_dense' and each patched Tensor method)."""
    calls: Counter = Counter()
    with monkeypatch.context() as m:
        for name in READS:
            original = getattr(torch.Tensor, name)

            def counting(self, *args, _name=name, _original=original, **kwargs):
                calls[_name] += 1
                return _original(self, *args, **kwargs)

            m.setattr(torch.Tensor, name, counting)
        with HostReads() as mode:
            yield calls
        calls["_local_scalar_dense"] = mode.count


@pytest.fixture(scope="module")
def model() -> HookedViT:
    return HookedViT.from_open_clip(tiny_clip(seed=4))


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _texts() -> torch.Tensor:
    return F.normalize(torch.randn(5, 48, generator=torch.Generator().manual_seed(9)), dim=-1)


def test_the_counter_sees_each_kind_of_read(monkeypatch):
    t = torch.ones(3)
    with counted(monkeypatch) as calls:
        t.sum().item(), bool(t.any()), t.tolist(), t.cpu(), float(t[0]), int(t[1])
    assert all(calls[name] for name in READS) and calls["_local_scalar_dense"] >= 4  # tolist reads memory directly


def test_forward_reads_nothing_per_batch(model, monkeypatch):
    with torch.no_grad(), deferred_checks():
        with counted(monkeypatch) as calls:
            for seed in range(3):
                model(_images(4, seed))
    assert sum(calls.values()) == 0, calls


def test_decomposition_reads_nothing_per_batch(model, monkeypatch):
    """The hooked pass, DecompositionCapture.finish, assemble and embedding_norms (normalize=True), with text
    scores of every (head, source) piece."""
    capture = DecompositionCapture(model, layers=[-2, -1], texts=_texts(), normalize=True)  # texts checked here
    with torch.no_grad(), deferred_checks():
        with counted(monkeypatch) as calls:
            for seed in range(3):
                model.run_with_hooks(_images(4, seed), fwd_hooks=capture.hooks())
                parts = capture.finish()
    assert sum(calls.values()) == 0, calls
    assert parts.source_scores.shape == (4, 2, model.cfg.n_heads, model.cfg.n_patches + 1, 5)


def _counting_steps(monkeypatch, per_step: list[Counter]) -> None:
    """Wrap ``reducers.run_step`` (one batch of run_reducers) so that each batch's reads are counted apart."""
    step = reducers.run_step

    def counted_step(*args, **kwargs):
        with counted(monkeypatch) as calls:
            step(*args, **kwargs)
        per_step.append(calls)

    monkeypatch.setattr(reducers, "run_step", counted_step)


def test_run_reducers_reads_nothing_per_batch(model, monkeypatch):
    """Every batch's forward, decomposition and reducer updates (means, stacks, text scores) read nothing; the
    whole run's reads do not grow with the number of batches."""
    totals = {}
    for n_batches in (2, 5):
        per_step: list[Counter] = []
        with monkeypatch.context() as m:
            _counting_steps(m, per_step)
            data = TensorImages(_images(3 * n_batches), labels=[i % 2 for i in range(3 * n_batches)])
            red = [MeanReducer(), StackReducer(), TextScoreReducer(_texts())]
            with counted(monkeypatch) as whole:
                run_reducers(model, data, red, batch_size=3, normalize=True, progress=False)
        assert len(per_step) == n_batches and all(sum(c.values()) == 0 for c in per_step), per_step
        totals[n_batches] = whole
    assert totals[2] == totals[5], totals  # the run's own reads: first batch, end of run, loader start


def test_collection_reads_nothing_per_batch(model, monkeypatch, tmp_path):
    per_step: list[Counter] = []
    _counting_steps(monkeypatch, per_step)
    plan = CollectionPlan(parts=("heads", "embed", "means"), batch_size=4, checkpoint_every=2)
    collect_on_rank(model, TensorImages(_images(18)), tmp_path / "out", plan, {"model": "tiny", "dataset": "r18"},
                    progress=False)
    assert len(per_step) == 5 and all(sum(c.values()) == 0 for c in per_step), per_step


# ------------------------------------------------------------------ the deferred checks still fire
def test_a_nan_image_in_a_later_batch_is_named_by_dataset_index(model):
    images = _images(12)
    images[9, 0, 3, 3] = float("nan")
    with pytest.warns(RuntimeWarning, match=r"1 input image\(s\) contain NaN or inf \(dataset indices 9\)"):
        run_reducers(model, TensorImages(images), [MeanReducer()], batch_size=4, progress=False)


def test_raw_pixels_in_the_first_batch_fail_before_the_second(model, monkeypatch):
    images = _images(12)
    images[1] = images[1].abs() * 100
    per_step: list[Counter] = []
    _counting_steps(monkeypatch, per_step)
    message = "dataset image 1 has a value of magnitude"
    with pytest.raises(BadInputError, match=re.escape(message)):
        run_reducers(model, TensorImages(images), [MeanReducer()], batch_size=4, progress=False)
    assert len(per_step) == 1


def test_raw_pixels_in_a_later_batch_fail_before_the_collection_is_complete(model, tmp_path):
    images = _images(12)
    images[10] = images[10].abs() * 100
    plan = CollectionPlan(parts=("heads",), batch_size=4)
    with pytest.raises(BadInputError, match=re.escape("dataset image 10 has a value of magnitude")):
        collect_on_rank(model, TensorImages(images), tmp_path / "out", plan, {"model": "t", "dataset": "d"},
                        progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_zero_embedding_under_normalize_is_named_by_dataset_index():
    model = HookedViT.from_open_clip(tiny_clip(seed=7))
    with torch.no_grad():
        model.W_proj.zero_()
    with pytest.raises(BadInputError, match=re.escape("normalize=True: dataset image(s) [0, 1, 2, 3] have a zero")):
        run_reducers(model, TensorImages(_images(8)), [MeanReducer()], batch_size=4, normalize=True, progress=False)


def test_deferred_checks_outside_a_run_report_at_the_end_of_the_block(model):
    bad = _images(3)
    bad[2, 1, 0, 0] = float("inf")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad(), deferred_checks():
            model(_images(3))
            model(bad)
            assert not caught  # nothing read yet
    assert len(caught) == 1 and "(dataset indices 5)" in str(caught[0].message)  # counted from the block's start


def test_the_gpu_check_script_runs_its_sections_on_the_cpu(model, monkeypatch):
    """app/benchmarks/host_syncs.py, with its "error" regions counting host reads on the CPU instead: the script
    runs, and its per-batch regions read nothing."""
    regions: list[Counter] = []

    @contextlib.contextmanager
    def counting_region():
        with counted(monkeypatch) as calls:
            yield
        regions.append(calls)

    monkeypatch.setattr(host_syncs, "syncs_raise", counting_region)
    images = _images(12)
    batches = list(images.split(4))
    lines = [host_syncs.check_forward(model, batches), host_syncs.check_decomposition(model, batches, _texts()),
             host_syncs.check_collection(model, images, 4, _texts())]
    assert all("3 batches, no synchronisation" in line for line in lines), lines
    assert len(regions) == 1 + 1 + 3 and all(sum(c.values()) == 0 for c in regions), regions
