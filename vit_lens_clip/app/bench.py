"""``vit-lens-clip bench``: every figure a side-by-side ratio measured in one run (suites in ``benchmarks/``).

Threads are pinned (torch and every BLAS/OpenMP pool, default 1) and printed; each contender gets CPU and wall
time per call (interleaved repeats, median and min), peak memory that counts storage kept alive by views,
and its agreement max|Δ|/max|y| with an exact counterpart. ``--json`` writes it all with versions and device.
"""

from __future__ import annotations

import argparse
import os

import torch

from vit_lens_clip.app.benchmarks.arguments import TEXTSPAN_SIZES, add_bench_arguments
from vit_lens_clip.app.benchmarks.results import Row, environment, format_table, write_json
from vit_lens_clip.app.benchmarks.suites import (
    full_rows,
    heatmap_and_collection_rows,
    load_memory_rows,
    model_rows,
    neuron_rows,
    textspan_tables,
)
from vit_lens_clip.app.benchmarks.timing import pinned_threads


def run_bench(args: argparse.Namespace) -> str:
    """Run the chosen suite under pinned threads; returns the printed tables."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.repeats < 1:
        raise ValueError("--repeats must be at least 1")
    sizes = dict(TEXTSPAN_SIZES[args.textspan_size])
    if args.max_memory is not None:  # else textspan_rows' default, text_span's
        sizes["max_memory"] = int(args.max_memory * 2**20)
    load_at_start = os.getloadavg()  # 1, 5 and 15 minute load averages: how busy the machine was
    with pinned_threads(args.threads) as threads:
        header = (f"device={device} threads: torch={threads['torch']} {' '.join(threads['pools'])}; "
                  f"load average at start {load_at_start[0]:.2f}")
        rows: list[Row] = []
        if args.suite == "full":
            precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
            rows += full_rows(args.arch, args.batch_size, device, args.repeats, precisions, sizes, args.collect_images,
                              args.textspan_data)
        elif args.suite == "textspan":
            rows += textspan_tables(args.textspan_data, sizes, args.repeats, device)
        elif args.suite == "memory":
            rows += load_memory_rows(tuple(a.strip() for a in args.arch.split(",") if a.strip()))
        else:
            rows += model_rows(args.arch, args.batch_size, device, args.repeats, include_naive=not args.no_naive)
            if args.heatmaps:
                rows += heatmap_and_collection_rows(args.arch, args.batch_size, device, args.repeats,
                                                    args.collect_images)
            if args.neurons:
                rows += neuron_rows(args.arch, args.batch_size, device, args.repeats)
            if args.textspan:
                rows += textspan_tables(args.textspan_data, sizes, args.repeats, device)
        env = environment(device, threads)
        env["load_average"] = {"start": list(load_at_start), "end": list(os.getloadavg())}
    tables = []
    for table in dict.fromkeys(r.table for r in rows):
        tables.append(format_table([r for r in rows if r.table == table], f"# {table} ({header})"))
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "func"}
        write_json(args.json, env, rows, settings)
    return "\n\n".join(tables) + "\n\nCPU ms: median (min) per call; x: median over the table's first row."


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_bench_arguments(parser)
    print(run_bench(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
