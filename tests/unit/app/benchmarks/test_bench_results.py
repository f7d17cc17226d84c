"""app/benchmarks/results.py and timing.py: agreement is the relative max error, tables divide medians by the
baseline's, the JSON keeps every row; the interleaved timer calls contenders in turn and pins threads."""

import json

import pytest
import torch

from vit_lens_clip.app.benchmarks.results import Row, agreement, environment, format_table, write_json
from vit_lens_clip.app.benchmarks.timing import Timing, pinned_threads, time_interleaved


def test_agreement_is_relative_max_error():
    ref = torch.tensor([1.0, -4.0, 2.0])
    assert agreement(ref + torch.tensor([0.0, 0.0, 0.4]), ref) == pytest.approx(0.1)
    assert agreement(torch.ones(2), torch.zeros(2)) == 1.0  # a zero reference: the absolute error


def test_timing_statistics():
    t = Timing(cpu_s=[3.0, 1.0, 2.0], wall_s=[5.0, 4.0, 6.0])
    assert (t.cpu_min, t.cpu_median, t.wall_min, t.wall_median) == (1.0, 2.0, 4.0, 5.0)


def test_table_ratios_and_json(tmp_path):
    base = Row.of("T", "base", "base", Timing([0.002] * 3, [0.004] * 3), 2**20, None, "-")
    fast = Row.of("T", "fast", "base", Timing([0.001] * 3, [0.001] * 3), 2**21, 1e-7, "base", note="n", size=3)
    table = format_table([base, fast], "title")
    lines = table.splitlines()
    assert lines[0] == "title" and len(lines) == 4
    assert "0.500x" in lines[3] and "0.250x" in lines[3] and "2.00x" in lines[3] and "1.0e-07" in lines[3]
    assert "1.000x" in lines[2] and lines[3].endswith("base; n")
    env = environment(torch.device("cpu"), {"torch": 1})
    write_json(tmp_path / "b.json", env, [base, fast], {"repeats": 3})
    saved = json.loads((tmp_path / "b.json").read_text())
    assert [r["name"] for r in saved["rows"]] == ["base", "fast"] and saved["rows"][1]["extra"] == {"size": 3}
    assert saved["settings"] == {"repeats": 3} and "environment" in saved


def test_interleaved_order_and_pinned_threads():
    calls = []
    timings = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                               torch.device("cpu"), repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4  # one untimed round, then three timed ones, in turn
    assert len(timings["a"].cpu_s) == 3 and all(t >= 0 for t in timings["b"].wall_s)
    with pytest.warns(UserWarning, match="not reliable"):
        time_interleaved({"a": lambda: None}, torch.device("cpu"), repeats=1)
    before = torch.get_num_threads()
    with pinned_threads(1) as pinned:
        assert torch.get_num_threads() == 1 and pinned["torch"] == 1
    assert torch.get_num_threads() == before
