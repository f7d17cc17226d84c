"""The huge-pages A/B runs each setting in fresh processes, alternating, and summarises per workload."""

import json

import pytest

from vit_lens_clip.app.benchmarks import huge_pages_ab


def test_ab_alternates_settings_in_fresh_processes(monkeypatch):
    seen = []

    class Done:
        def __init__(self, setting):
            self.stdout = json.dumps({"cpu_s": 2.0 if setting == "1" else 4.0, "wall_s": 1.0,
                                      "minor_faults": 10 if setting == "1" else 1000})

    def fake_run(argv, env, **kw):
        seen.append((argv[argv.index("--child") + 1], env[huge_pages_ab.VARIABLE], env["OMP_NUM_THREADS"]))
        return Done(env[huge_pages_ab.VARIABLE])

    monkeypatch.setattr(huge_pages_ab.subprocess, "run", fake_run)
    report = huge_pages_ab.run_ab(runs=2, size="tiny")
    assert seen == [("textspan", "1", "1"), ("textspan", "0", "1"), ("forward", "1", "1"), ("forward", "0", "1"),
                    ("textspan", "0", "1"), ("textspan", "1", "1"), ("forward", "0", "1"), ("forward", "1", "1")]
    for workload in huge_pages_ab.WORKLOADS:
        assert report["summary"][workload]["on_over_off"] == pytest.approx(0.5)
        assert report["summary"][workload]["median_minor_faults"] == {"1": 10, "0": 1000}
    assert len(report["load_average"]["start"]) == 3
    with pytest.raises(ValueError, match="at least 1"):
        huge_pages_ab.run_ab(runs=0)


@pytest.mark.parametrize("workload", huge_pages_ab.WORKLOADS)
def test_child_times_each_workload(workload):
    timing = huge_pages_ab.child(workload, "tiny")
    assert timing["cpu_s"] > 0 and timing["wall_s"] > 0 and timing["minor_faults"] >= 0
