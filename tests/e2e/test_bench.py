"""The bench measures what it says: a memory tracker that follows storages, CPU and wall time, the CLI suites."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_clip

from vit_lens_clip import HookedViT
from vit_lens_clip.app.benchmarks.memory import peak_bytes
from vit_lens_clip.app.benchmarks.results import agreement
from vit_lens_clip.app.benchmarks.timing import pinned_threads, time_interleaved
from vit_lens_clip.app.cli import main
from vit_lens_clip.decompose.parts import DecompositionCapture, decompose

CPU = torch.device("cpu")
MiB = 2**20


def _keep_rows(copy: bool) -> list[torch.Tensor]:
    """Eight 4 MiB activations in turn, keeping one row of each (a view, or a copy of the row)."""
    kept = []
    for _ in range(8):
        activation = torch.ones(1024, 1024)  # 4 MiB
        row = activation[:1]
        kept.append(row.clone() if copy else row)
    return kept


def test_tracker_counts_storage_kept_alive_by_a_view():
    views, _ = peak_bytes(lambda: _keep_rows(copy=False), CPU)
    copies, _ = peak_bytes(lambda: _keep_rows(copy=True), CPU)
    assert views >= 8 * 4 * MiB  # every whole activation stays alive behind its one-row view
    assert copies < 2 * 4 * MiB + MiB  # one activation at a time, plus 8 small rows


def test_tracker_ignores_views_of_existing_tensors_and_counts_numpy():
    big = torch.ones(1024, 1024)
    assert peak_bytes(lambda: big[:10].T, CPU)[0] < 64 * 1024  # Python objects only, no tensor storage
    numpy_peak, _ = peak_bytes(lambda: np.ones((1024, 1024)), CPU)
    assert numpy_peak >= 8 * MiB


def test_interleaved_timing_records_cpu_and_wall_and_warns_under_three_repeats():
    with pinned_threads(1) as threads:
        assert threads["torch"] == 1
        timings = time_interleaved({"a": lambda: torch.ones(200, 200) @ torch.ones(200, 200), "b": lambda: None},
                                   CPU, repeats=3)
        with pytest.warns(UserWarning, match="repeat"):
            time_interleaved({"a": lambda: None}, CPU, repeats=2)
    assert len(timings["a"].cpu_s) == len(timings["a"].wall_s) == 3
    assert timings["a"].cpu_min <= timings["a"].cpu_median


def test_agreement_is_relative_max_difference():
    assert agreement(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0])) == 0.5


def test_capture_keeps_only_owned_small_tensors():
    """Nothing the capture keeps is a view into a whole activation (the decomposition would hold them all)."""
    hooked = HookedViT.from_open_clip(tiny_clip())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    texts = F.normalize(torch.randn(5, hooked.cfg.output_dim), dim=-1)
    for kwargs in ({}, {"texts": texts}):
        capture = DecompositionCapture(hooked, **kwargs)
        with torch.no_grad():
            hooked.run_with_hooks(x, fwd_hooks=capture.hooks())
        for name, kept in capture.store.items():
            assert kept.untyped_storage().nbytes() == kept.numel() * kept.element_size(), name
        if "texts" in kwargs:  # values are kept as their text scores [B, H, N, K+1], not [B, N, H, d_head]
            assert capture.store["blocks.0.attn.hook_v"].shape[-1] == texts.shape[0] + 1
        capture.finish()


def test_capture_with_texts_changed_after_the_pass_needs_unreduced_values():
    hooked = HookedViT.from_open_clip(tiny_clip())
    x = torch.randn(2, 3, 32, 32)
    texts = F.normalize(torch.randn(4, hooked.cfg.output_dim), dim=-1)
    capture = DecompositionCapture(hooked, texts=texts[:1])
    with torch.no_grad():
        hooked.run_with_hooks(x, fwd_hooks=capture.hooks())
    capture.texts = texts
    with pytest.raises(ValueError, match="reduce_values"):
        capture.finish()
    capture = DecompositionCapture(hooked, texts=texts[:1], reduce_values=False)
    with torch.no_grad():
        hooked.run_with_hooks(x, fwd_hooks=capture.hooks())
    capture.texts = texts
    expected = decompose(hooked, x, texts=texts).source_scores
    assert torch.allclose(capture.finish().source_scores, expected, atol=1e-6)


def test_full_suite_runs_on_cpu_at_tiny_sizes_and_writes_json(tmp_path, capsys):
    """The command the first GPU run uses (--device cuda), here on CPU at tiny sizes."""
    config = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8,
                                              "head_width": 16},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "bench-tiny-vit.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "bench-tiny-vit.json")
    out = tmp_path / "b.json"
    argv = ["bench", "--suite", "full", "--device", "cpu", "--arch", "bench-tiny-vit", "--batch-size", "2",
            "--repeats", "1", "--textspan-size", "tiny", "--collect-images", "2", "--json", str(out)]
    with pytest.warns(UserWarning, match="repeat"):
        assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "per-head decomposition" in printed and "bf16" in printed and "fp16" in printed
    data = json.loads(out.read_text())
    assert data["environment"]["threads"]["torch"] == 1 and data["environment"]["versions"]["torch"]
    # torch started before main() here, so whether it got huge pages is recorded as unknown (see the next test)
    assert data["environment"]["torch_huge_pages"].startswith("unknown: torch started before the command line")
    assert data["environment"]["numpy_huge_pages"] in (True, False, None)
    load = data["environment"]["load_average"]  # how busy the machine was, at the start and the end of the run
    assert len(load["start"]) == len(load["end"]) == 3 and all(v >= 0 for v in load["start"] + load["end"])
    rows = data["rows"]
    names = {r["name"] for r in rows}
    assert {"text heatmap (1 text)", "text_span float64 (default)", "open_clip encode_image",
            "second-order stats, layer 0"} <= names
    for r in rows:
        assert r["cpu_s"] and r["wall_s"] and r["peak_bytes"] >= 0
        if r["agreement"] is not None and "fp32" in r["table"]:
            assert r["agreement"] < 1e-4, r
    textspan = [r for r in rows if r["name"].startswith("text_span")]
    assert all(r["extra"]["picks_identical"] == r["extra"]["heads"] for r in textspan)
    assert {r["table"].split(":")[0] for r in textspan} == {"TextSpan on random float64 data",
                                                            "TextSpan on head-like float32 data"}


def test_command_line_records_the_huge_pages_setting_torch_starts_with(tmp_path):
    out = tmp_path / "t.json"
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    argv = [sys.executable, "-m", "vit_lens_clip", "bench", "--suite", "textspan", "--device", "cpu",
            "--textspan-size", "tiny", "--textspan-data", "random", "--repeats", "1", "--json", str(out)]
    subprocess.run(argv, check=True, env={**env, "THP_MEM_ALLOC_ENABLE": "1"}, capture_output=True)
    assert json.loads(out.read_text())["environment"]["torch_huge_pages"] == "1"  # the user's value, recorded
    # that an unset variable stays unset is tests/unit/app/test_huge_pages.py's (the same decision, in-process)


def test_neuron_rows_agree_with_a_direct_computation_and_report_bytes(tmp_path):
    """Second-order statistics of a tiny tower: s matches run_with_cache, bytes per image are in note and extra."""
    from vit_lens_clip.app.benchmarks.suites import neuron_rows

    config = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 4, "width": 64, "patch_size": 8,
                                              "head_width": 16},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "bench-tiny-neurons.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "bench-tiny-neurons.json")
    with pinned_threads(1):
        rows = neuron_rows("bench-tiny-neurons", 2, CPU, repeats=3)
    plain, stats = rows
    assert plain.name == "HookedViT forward (no hooks)" and stats.name == "second-order stats, layer 1"
    assert stats.agreement is not None and stats.agreement <= 1e-5
    assert "run_with_cache" in stats.counterpart
    # 2 later layers x 4 heads x 256 neurons x 4 bytes
    assert stats.extra["s_bytes_per_image"] == 2 * 4 * 256 * 4
    assert stats.extra["stored_bytes_per_image"] > stats.extra["s_bytes_per_image"]
    assert stats.extra["effects_bytes_per_image"] == 256 * 32 * 4
    assert "kB" in stats.note and len(stats.cpu_s) == 3 and stats.peak_bytes > 0
