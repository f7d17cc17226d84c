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
