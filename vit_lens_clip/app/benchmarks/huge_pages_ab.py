"""A/B of torch's transparent huge pages (``THP_MEM_ALLOC_ENABLE``): the evidence for the command line's default.

torch reads the setting once, at its first allocation, so each measurement is a fresh process. The runs
alternate the settings (A B, then B A, ...) so that drift in the machine's load falls on both alike; each
process times one workload after an untimed warm-up call and reports CPU time, wall time and its minor page
faults. Workloads: ``textspan`` (batched TextSpan, paper-sized: 48 heads x 2000 images x 3498 texts, D = 512,
float64) and ``forward`` (HookedViT ViT-B-16, batch 8, fp32, random weights). One thread throughout.

    python -m vit_lens_clip.app.benchmarks.huge_pages_ab --runs 5 --json docs/bench/cpu-huge-pages.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

VARIABLE = "THP_MEM_ALLOC_ENABLE"
SETTINGS = ("1", "0")
WORKLOADS = ("textspan", "forward")
SIZES = {"paper": {"n_heads": 48, "n_images": 2000, "n_texts": 3498, "d_out": 512, "arch": "ViT-B-16", "batch": 8},
         "tiny": {"n_heads": 2, "n_images": 40, "n_texts": 30, "d_out": 16, "arch": None, "batch": 2}}


def _workload(name: str, size: str):
    """The call to time, built in this process (data, weights) before any timing."""
    import torch

    s = SIZES[size]
    if name == "textspan":
        from vit_lens_clip.methods.textspan.algorithm import text_span
        from vit_lens_clip.methods.textspan.bench import random_head_data

        C, T = random_head_data(s["n_heads"], s["n_images"], s["n_texts"], s["d_out"], seed=0)
        return lambda: text_span(C, T, k=min(20, s["n_texts"]), rank=80)
    from vit_lens_clip.app.benchmarks.suites import perturbed_open_clip
    from vit_lens_clip.model.hooked_vit import HookedViT

    if s["arch"] is None:  # a tiny tower, for the tests
        from vit_lens_clip.model.config import ViTConfig

        model = HookedViT(ViTConfig(image_size=16, patch_size=8, d_model=16, n_layers=1, n_heads=2, d_mlp=32,
                                    output_dim=8)).eval()
    else:
        model = HookedViT.from_open_clip(perturbed_open_clip(s["arch"], torch.device("cpu")))
    images = torch.randn(s["batch"], 3, *model.cfg.image_size, generator=torch.Generator().manual_seed(0))

    def forward():
        with torch.no_grad():
            return model(images)

    return forward


def child(name: str, size: str) -> dict:
    """Time one workload in this (fresh) process: one untimed call, then one timed call."""
    import resource

    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    with threadpool_limits(1):
        call = _workload(name, size)
        call()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        cpu, wall = time.process_time(), time.perf_counter()
        call()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {"cpu_s": cpu, "wall_s": wall, "minor_faults": faults}


def run_ab(runs: int = 5, size: str = "paper", workloads: tuple[str, ...] = WORKLOADS) -> dict:
    """``runs`` fresh processes per setting and workload, the settings' order alternating run by run."""
    if runs < 1:
        raise ValueError("runs must be at least 1")
    load_at_start = os.getloadavg()
    results: dict[str, dict[str, list[dict]]] = {w: {s: [] for s in SETTINGS} for w in workloads}
    steps = [(w, s) for r in range(runs) for w in workloads for s in (SETTINGS if r % 2 == 0 else SETTINGS[::-1])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    for workload, setting in tqdm(steps, desc="huge-pages A/B processes"):
        out = subprocess.run([sys.executable, "-m", "vit_lens_clip.app.benchmarks.huge_pages_ab", "--child", workload,
                              "--size", size],
                             env={**env, VARIABLE: setting}, capture_output=True, text=True, check=True)
        results[workload][setting].append(json.loads(out.stdout.strip().splitlines()[-1]))
    summary = {}
    for workload, by_setting in results.items():
        medians = {s: statistics.median(r["cpu_s"] for r in rows) for s, rows in by_setting.items()}
        summary[workload] = {"median_cpu_s": medians, "on_over_off": medians["1"] / medians["0"],
                             "median_minor_faults": {s: statistics.median(r["minor_faults"] for r in rows)
                                                     for s, rows in by_setting.items()}}
    return {"runs": runs, "size": size, "load_average": {"start": list(load_at_start), "end": list(os.getloadavg())},
            "results": results, "summary": summary}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="processes per setting and workload (default 5)")
    parser.add_argument("--size", choices=sorted(SIZES), default="paper")
    parser.add_argument("--json", help="write the runs and their summary here")
    parser.add_argument("--child", choices=WORKLOADS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.size)))
        return
    report = run_ab(args.runs, args.size)
    for workload, s in report["summary"].items():
        print(f"{workload}: median CPU {s['median_cpu_s']['1']:.3f} s with huge pages, {s['median_cpu_s']['0']:.3f} s "
              f"without ({s['on_over_off']:.3f}x); minor faults {s['median_minor_faults']['1']:.0f} vs "
              f"{s['median_minor_faults']['0']:.0f}")
    print(f"load average at start {report['load_average']['start'][0]:.2f}, at end {report['load_average']['end'][0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
