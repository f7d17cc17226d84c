"""Fault injection: a run killed at *every* write boundary of every checkpointing reducer resumes to results
bitwise identical to an uninterrupted run (issue 12, item 2)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import tiny_clip

from vit_lens_clip import HookedViT
from vit_lens_clip.datasets.folder import TensorImages
from vit_lens_clip.decompose import checkpoint as ckpt_io
from vit_lens_clip.decompose.reducers import (
    ActivationMeanReducer,
    MeanReducer,
    StackReducer,
    TextScoreReducer,
    run_reducers,
)
from vit_lens_clip.decompose.store import StoredParts
from vit_lens_clip.decompose.store_writer import ShardWriter

N, BATCH = 4, 2  # 2 batches; a checkpoint after each (the second is the final one)


class _Killed(BaseException):
    """Stands for the process dying: nothing after the boundary runs."""


@pytest.fixture(scope="module")
def setup():
    model = HookedViT.from_open_clip(tiny_clip(seed=3))
    images = torch.randn(N, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    texts = torch.nn.functional.normalize(torch.randn(4, model.cfg.output_dim, generator=torch.Generator().manual_seed(6)),
                                          dim=-1)
    return model, images, texts


def _run(model, images, texts, folder: Path):
    """Every checkpointing reducer in one run; returns all their results as one dict of tensors."""
    reducers = [MeanReducer(), StackReducer(), TextScoreReducer(texts), ShardWriter(folder / "heads", shard_size=2),
                ShardWriter(folder / "heads_embed", parts=("heads", "embed"), shard_size=3)]
    act = ActivationMeanReducer(["blocks.1.hook_attn_out"])
    summary = run_reducers(model, TensorImages(images, labels=[i % 3 for i in range(N)]), reducers, batch_size=BATCH,
                           layers=[1, 2], checkpoint_dir=folder / "ckpt", checkpoint_every=1, progress=False,
                           activation_means=[act])
    out = {f"mean.{k}": v for k, v in reducers[0].result().items()}
    out.update({f"stack.{k}": v for k, v in reducers[1].result().items()})
    out.update({f"scores.{k}": v for k, v in reducers[2].result().items()})
    out.update({f"shards.{k}": v for k, v in StoredParts(reducers[3].result()).read().items()})
    out.update({f"shards_embed.{k}": v for k, v in StoredParts(reducers[4].result()).read().items()})
    out.update({f"act.{k}": v for k, v in act.result().items()})
    out["images_seen"] = torch.tensor(summary.images)
    return out


def _assert_bitwise(a: dict, b: dict, where: str) -> None:
    assert sorted(a) == sorted(b), where
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]), f"{where}: {k}"


def test_kill_at_every_write_boundary_resumes_bitwise(setup, tmp_path):
    model, images, texts = setup
    reference = _run(model, images, texts, tmp_path / "reference")
    assert reference["stack.heads"].shape[0] == N and reference["shards.heads"].shape[0] == N
    labels_seen, k = set(), 0
    try:
        while True:
            k += 1
            calls = {"n": 0}

            def boundary(label: str, k=k, calls=calls) -> None:
                calls["n"] += 1
                labels_seen.add(label.split(" ")[0])
                if calls["n"] == k:
                    raise _Killed(label)

            folder = tmp_path / f"k{k}"
            ckpt_io.BOUNDARY_HOOK = boundary
            try:
                _run(model, images, texts, folder)
                break  # k exceeded the number of boundaries: an uninterrupted run
            except _Killed:
                pass
            finally:
                ckpt_io.BOUNDARY_HOOK = None
            _assert_bitwise(_run(model, images, texts, folder), reference, f"killed at boundary {k}")
    finally:
        ckpt_io.BOUNDARY_HOOK = None
    n_boundaries = k - 1
    # 2 checkpoints × (state + manifest) + 2 × 2 shards with their manifests + final manifests, 4 boundaries each
    assert n_boundaries >= 50, n_boundaries
    assert {"open", "half-written", "rename", "renamed", "remove"} <= labels_seen


def test_real_process_kill_resumes_bitwise(setup, tmp_path):
    """One real kill (os._exit in a child process, mid-checkpoint) for good measure."""
    model, images, texts = setup
    reference = _run(model, images, texts, tmp_path / "reference")
    tests_dir = Path(__file__).parent
    script = textwrap.dedent(f"""
        import os, sys, torch
        sys.path[:0] = [{str(tests_dir)!r}, {str(tests_dir.parent)!r}]  # this file, and tests/ for conftest
        from test_checkpoint_faults import _run
        from conftest import tiny_clip
        from vit_lens_clip import HookedViT
        from vit_lens_clip.decompose import checkpoint as ckpt_io
        def boundary(label):  # die with the first checkpoint's state file half written
            if label.startswith("half-written state-"):
                os._exit(9)
        ckpt_io.BOUNDARY_HOOK = boundary
        images, texts = torch.load({str(tmp_path / 'inputs.pt')!r}, weights_only=True)
        _run(HookedViT.from_open_clip(tiny_clip(seed=3)), images, texts, __import__('pathlib').Path({str(tmp_path / 'killed')!r}))
    """)
    torch.save((images, texts), tmp_path / "inputs.pt")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr[-2000:]
    assert list((tmp_path / "killed" / "ckpt").glob("state-*.safetensors.tmp"))  # the torn file is there
    _assert_bitwise(_run(model, images, texts, tmp_path / "killed"), reference, "after a real kill")
