"""The main job, ``vit-lens-clip report``: the whole analysis on one model, as an offline HTML page plus
JSON and CSV of every number.

Sections (``app/sections``, in order): data, decomposition, zero-shot accuracy, the layer mean-ablation curves;
TextSpan for the last layers (variance explained, completeness); text heatmaps and joint head×patch maps;
zero-shot segmentation against the baselines; the spurious-cue table; an attention-pattern view; the neuron
lens; SAE features. The page opens with the report's provenance (``app/provenance.py``) and the sections that
did not run, with why. Defaults: the embedded shapes model and built-in synthetic scenes.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from vit_lens_clip.app.config import ReportConfig, add_report_arguments
from vit_lens_clip.app.provenance import provenance_markdown, report_provenance
from vit_lens_clip.app.run_folder import ReportFolder, boundary, check_report_inputs, report_files, report_settings
from vit_lens_clip.app.sections import SECTIONS, ReportContext, ReportValues, Section, SectionSkipped
from vit_lens_clip.convert.sources import check_text_tokenizer
from vit_lens_clip.distributed.collection import read_collection_info
from vit_lens_clip.embedded import EMBEDDED_NAME
from vit_lens_clip.errors import BadInputError
from vit_lens_clip.loading import load_clip
from vit_lens_clip.viz.html import figures_to_html

__all__ = ["ReportConfig", "add_report_arguments", "run_report", "run_sections"]


def _model_summary(ctx: ReportContext) -> dict[str, Any]:
    cfg = ctx.loaded.model.cfg
    return {"name": ctx.loaded.name, "pretrained": ctx.loaded.pretrained, "layers": cfg.n_layers,
            "heads": cfg.n_heads, "width": cfg.d_model, "tokens": cfg.n_ctx, "activation": cfg.act_fn,
            "pooling": cfg.pool_type}


def _skip_reason(section: Section, ctx: ReportContext) -> str | None:
    """Why ``section`` does not run (None: it runs): ``--skip``, or the first value it needs that is absent."""
    if section.skippable and section.name in ctx.config.skip:
        return "--skip"
    absent = [name for name in section.needs if not ctx.has(name)]
    return f"needs {absent[0]}: {ctx.why_missing(absent[0])}" if absent else None


def run_sections(ctx: ReportContext, sections: tuple[Section, ...] = SECTIONS) -> None:
    """Run each section whose needs are met, in order, timing each one into ``ctx.timings``; every section
    that does not run (a missing need, ``--skip``, or ``SectionSkipped`` from its run) is printed with its reason
    and listed in ``ctx.numbers["skipped_sections"]``. A section may set only the values it declares in ``gives``."""
    skipped = ctx.numbers.setdefault("skipped_sections", {})
    for section in sections:
        reason = _skip_reason(section, ctx)
        if reason is not None:
            skipped[section.name] = reason
            if reason != "--skip":
                print(f"[report] {section.name} skipped: {reason}", flush=True)
            continue
        print(f"[report] {section.name} ...", flush=True)
        start = time.perf_counter()
        before = {name: getattr(ctx.values, name) for name in ReportValues.names()}
        try:
            with contextlib.nullcontext() if section.grad else torch.no_grad():
                section.run(ctx)
        except SectionSkipped as skip:
            skipped[section.name] = str(skip)
            print(f"[report] {section.name} skipped: {skip}", flush=True)
            continue
        undeclared = sorted(n for n, v in before.items() if getattr(ctx.values, n) is not v and n not in section.gives)
        if undeclared:
            raise RuntimeError(f"section {section.name} set values {undeclared} it does not declare in gives")
        ctx.timings[section.name] = round(time.perf_counter() - start, 2)
        boundary(f"section {section.name}")


def _skipped_markdown(skipped: dict[str, str]) -> str:
    """The sections that did not run, each with its reason."""
    if not skipped:
        return "Every section ran."
    return "\n".join(f"- **{name}**: " + ("left out with --skip" if reason == "--skip" else reason)
                     for name, reason in skipped.items())


def _write(ctx: ReportContext) -> None:
    """report.html, results.json and results.csv into ``ctx.out`` (the run's staging folder)."""
    cfg = ctx.loaded.model.cfg
    out = ctx.out
    intro = (f"Model **{ctx.loaded.name}** ({cfg.n_layers} layers, {cfg.n_heads} heads, width {cfg.d_model}, "
             f"{cfg.n_ctx} tokens). Parts are folded through the final LayerNorm (equal-share convention) and "
             f"divided by the embedding norm. Wall time {ctx.timings['total']:.0f} s.\n\n"
             "More: every head, neuron and SAE feature with its dataset examples, maps, texts and a search, in the "
             "explorer: `vit-lens-clip explore COLLECTION --out SITE` (docs/explorer.md).\n\n"
             + provenance_markdown(ctx.numbers["provenance"]))
    head = [("About this report", intro), ("Skipped sections", _skipped_markdown(ctx.numbers["skipped_sections"]))]
    page = figures_to_html(head + ctx.page, title=f"vit_lens_clip report: {ctx.loaded.name}")
    (out / "report.html").write_text(page, encoding="utf-8")
    boundary("wrote report.html")
    (out / "results.json").write_text(json.dumps(ctx.numbers, indent=1, default=_jsonable))
    boundary("wrote results.json")
    with open(out / "results.csv", "w", newline="") as f:
        keys = sorted({k for row in ctx.csv_rows for k in row}, key=lambda k: (k not in ("section", "metric", "value"), k))
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(ctx.csv_rows)


def _config_from_collection(config: ReportConfig) -> ReportConfig:
    """With ``--from DIR``: the model (name, weights, precision) and kept layers recorded by the collection."""
    identity = read_collection_info(config.source)["identity"]
    model, pretrained, precision = identity["load"]
    if config.model not in (EMBEDDED_NAME, model) or config.pretrained not in (None, pretrained):
        raise BadInputError(f"--from {config.source} was collected with --model {model} --pretrained {pretrained}; "
                            "drop --model/--pretrained (the folder names its model)")
    defaults = {f.name: f.default for f in dataclasses.fields(ReportConfig)}
    n_layers = len(identity["layers"])
    if config.last_layers not in (defaults["last_layers"], n_layers):
        raise BadInputError(f"--from {config.source} holds the last {n_layers} layers; drop --last-layers "
                            f"{config.last_layers} (the folder decides)")
    if config.n_images != defaults["n_images"]:
        raise BadInputError(f"--from {config.source} reports on every image the folder holds; drop --n-images "
                            f"(collect fewer images instead)")
    return dataclasses.replace(config, model=model, pretrained=pretrained, precision=precision,
                               last_layers=n_layers)


def _check_collection_model(config: ReportConfig, key: str) -> None:
    """Refuse to explain a collection with other weights than the ones that collected it."""
    recorded = read_collection_info(config.source)["identity"]["model"]
    if key != recorded:
        raise BadInputError(f"the weights loaded for {config.model} ({key}) are not those that wrote {config.source} "
                            f"({recorded})")


def run_report(config: ReportConfig, command_line: Optional[Sequence[str]] = None) -> Path:
    """Run every section not in ``config.skip`` and write report.html, results.json and results.csv.
    ``command_line``: the command to record in the provenance (default: this process's)."""
    t_start = time.perf_counter()
    check_report_inputs(config)  # before any heavy work
    if config.source:
        config = _config_from_collection(config)
    settings = report_settings(config)
    check_text_tokenizer(config.model, config.tokenizer)  # offline: an uncached hub tokenizer fails before anything is built
    folder = ReportFolder(config.out, settings, config.overwrite, report_files(config.skip))
    folder.check()  # refused now, before the model loads and before anything is created
    with folder:  # locked; the new report is written to a staging folder and put in place only once complete
        torch.manual_seed(config.seed)
        loaded = load_clip(config.model, config.pretrained, device=config.device, precision=config.precision,
                           tokenizer=config.tokenizer)
        if config.source:
            _check_collection_model(config, loaded.key)
        ctx = ReportContext(config=dataclasses.replace(config, out=folder.staging), loaded=loaded)
        ctx.numbers["model"] = _model_summary(ctx)
        ctx.numbers["provenance"] = report_provenance(loaded, command_line)
        run_sections(ctx)
        ctx.timings["total"] = round(time.perf_counter() - t_start, 2)
        ctx.numbers["timings_s"] = ctx.timings
        _write(ctx)
        folder.commit()
    print(f"[report] wrote {config.out / 'report.html'}, results.json, results.csv in {ctx.timings['total']:.0f} s")
    print("[report] wall time per section:")
    for name, seconds in ctx.timings.items():
        print(f"  {name:14s} {seconds:8.1f} s")
    return config.out


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)
