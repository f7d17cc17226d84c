"""app/segment.py: ``vit-lens-clip segment`` on a few shapes scenes scores each chosen method with metrics in
[0, 1] and writes its files into --out (the embedded model, no network)."""

from vit_lens_clip.app.cli import build_parser
from vit_lens_clip.app.segment import run_segment_command


def test_segment_command_writes_scored_methods(tmp_path, capsys):
    out = tmp_path / "seg"
    args = build_parser().parse_args(["segment", "--limit", "3", "--methods", "decomposition", "raw_attention",
                                      "--examples", "0", "--batch-size", "3", "--templates", "simple",
                                      "--out", str(out)])
    results = run_segment_command(args)
    assert set(results) == {"decomposition", "raw_attention"}
    for metrics in results.values():
        assert metrics and all(0.0 <= v <= 1.0 for k, v in metrics.items() if k != "n" and isinstance(v, float))
    written = {p.suffix for p in out.iterdir()}
    assert ".csv" in written and ".html" in written
    assert "Zero-shot segmentation" in capsys.readouterr().out
