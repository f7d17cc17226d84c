"""Rows of a bench, their table, and the JSON file with versions, threads and device."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from vit_lens_clip.app.benchmarks.timing import Timing
from vit_lens_clip.app.huge_pages import torch_setting


@dataclass
class Row:
    """One contender: times per call, peak memory, and agreement max|Δ|/max|y| with its exact counterpart."""

    table: str
    name: str
    baseline: str
    cpu_s: list[float]
    wall_s: list[float]
    peak_bytes: int
    agreement: float | None
    counterpart: str
    note: str = ""
    extra: dict = field(default_factory=dict)

    @classmethod
    def of(cls, table: str, name: str, baseline: str, timing: Timing, peak: int, agreement, counterpart: str,
           note: str = "", **extra) -> Row:
        return cls(table, name, baseline, timing.cpu_s, timing.wall_s, peak, agreement, counterpart, note, extra)

    @property
    def timing(self) -> Timing:
        return Timing(self.cpu_s, self.wall_s)


def agreement(y: torch.Tensor, reference: torch.Tensor) -> float:
    """max |y - reference| / max |reference|, in float64."""
    y, reference = y.detach().double().cpu(), reference.detach().double().cpu()
    scale = reference.abs().max().item()
    return (y - reference).abs().max().item() / (scale if scale > 0 else 1.0)


def format_table(rows: list[Row], title: str) -> str:
    """Times are medians (min in brackets); ratios divide medians by the baseline row's."""
    by_name = {r.name: r for r in rows}
    lines = [title, f"{'contender':46s} {'CPU ms':>17s} {'x CPU':>7s} {'wall ms':>9s} {'x wall':>7s} "
                    f"{'peak MiB':>9s} {'x mem':>6s} {'agreement':>9s}  vs / note"]
    for r in rows:
        base = by_name[r.baseline]
        t, b = r.timing, base.timing
        mem = r.peak_bytes / base.peak_bytes if base.peak_bytes else float("nan")
        agree = "-" if r.agreement is None else f"{r.agreement:9.1e}"
        lines.append(
            f"{r.name:46s} {t.cpu_median * 1e3:8.1f} ({t.cpu_min * 1e3:6.1f}) {t.cpu_median / b.cpu_median:6.3f}x "
            f"{t.wall_median * 1e3:9.1f} {t.wall_median / b.wall_median:6.3f}x {r.peak_bytes / 2**20:9.1f} "
            f"{mem:5.2f}x {agree:>9s}  {r.counterpart}{'; ' + r.note if r.note else ''}"
        )
    return "\n".join(lines)


def _numpy_huge_pages() -> bool | None:
    """Whether NumPy advises huge pages for its large arrays (its default on Linux)."""
    for name in ("_core", "core"):  # NumPy 2, NumPy 1
        multiarray = getattr(getattr(np, name, None), "multiarray", None)
        if multiarray is not None and hasattr(multiarray, "_get_madvise_hugepage"):
            return bool(multiarray._get_madvise_hugepage())
    return None


def environment(device: torch.device, threads: dict) -> dict:
    """Versions, threads and device, so that runs can be compared."""
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("numpy", "open_clip_torch", "threadpoolctl", "vit_lens_clip"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"versions": versions, "threads": threads, "device": str(device), "cpu": cpu,
            "platform": platform.platform(),
            "torch_huge_pages": torch_setting(),
            "numpy_huge_pages": _numpy_huge_pages()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_json(path: str | Path, env: dict, rows: list[Row], settings: dict) -> None:
    Path(path).write_text(json.dumps({"environment": env, "settings": settings, "rows": [asdict(r) for r in rows]},
                                     indent=1))
