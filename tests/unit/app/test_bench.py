"""app/bench.py: ``vit-lens-clip bench`` runs its model suite on a (stubbed, tiny) open_clip architecture under
pinned threads, prints one table whose exact contenders agree, and writes the JSON it is asked for."""

import json

import open_clip
import pytest
from conftest import tiny_clip

from vit_lens_clip.app.bench import run_bench
from vit_lens_clip.app.cli import build_parser


def test_model_suite_on_a_tiny_architecture(tmp_path, monkeypatch):
    monkeypatch.setattr(open_clip, "create_model", lambda arch, pretrained=None: tiny_clip(seed=18))
    args = build_parser().parse_args(["bench", "--arch", "tiny", "--batch-size", "2", "--repeats", "3", "--no-naive",
                                      "--device", "cpu", "--json", str(tmp_path / "b.json")])
    text = run_bench(args)
    assert text.startswith("# ") and "threads: torch=1" in text
    saved = json.loads((tmp_path / "b.json").read_text())
    rows = saved["rows"]
    assert rows and all(r["agreement"] is None or r["agreement"] < 1e-4 for r in rows)
    assert saved["settings"]["arch"] == "tiny"


def test_repeats_must_be_positive():
    args = build_parser().parse_args(["bench", "--repeats", "0"])
    with pytest.raises(ValueError, match="--repeats must be at least 1"):
        run_bench(args)


def test_memory_suite_measures_each_listed_architecture(tmp_path, monkeypatch):
    """``--suite memory --arch A,B`` hands both architectures to load_memory_rows and writes its rows and the
    machine's load average into the JSON (the measuring itself, a fresh process per load, is memory.py's)."""
    from vit_lens_clip.app import bench
    from vit_lens_clip.app.benchmarks.results import Row
    from vit_lens_clip.app.benchmarks.timing import Timing

    asked = []

    def fake_rows(archs):
        asked.append(archs)
        return [Row.of(f"memory {a}", "open_clip", "open_clip", Timing([1.0], [1.0]), 100, 0.0, "itself") for a in archs]

    monkeypatch.setattr(bench, "load_memory_rows", fake_rows)
    args = build_parser().parse_args(["bench", "--suite", "memory", "--arch", "ViT-B-16, ViT-L-14", "--device", "cpu",
                                      "--json", str(tmp_path / "m.json")])
    text = run_bench(args)
    assert asked == [("ViT-B-16", "ViT-L-14")] and "# memory ViT-L-14" in text
    saved = json.loads((tmp_path / "m.json").read_text())
    assert [r["table"] for r in saved["rows"]] == ["memory ViT-B-16", "memory ViT-L-14"]
    assert len(saved["environment"]["load_average"]["start"]) == 3
