"""The second-order neuron lens (methods.neurons) on the shapes world, written as report output.

``add_neuron_study(out, loaded, options)`` runs the protocol on shapes-world scenes and writes its page parts,
its numbers (``out.numbers["neurons"]``) and CSV rows into a ``ReportOutput``: the report's neuron section
passes its context, ``run_neurons_command`` (``vit-lens-clip neurons``) a fresh output it then writes out.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from safetensors.torch import save_file

from vit_lens_clip.app.report_output import ReportOutput
from vit_lens_clip.app.run_folder import replace_files
from vit_lens_clip.datasets.shapes_adapters import ShapesSegmentation, shapes_images
from vit_lens_clip.datasets.shapes_world import zero_shot_labels
from vit_lens_clip.decompose.folder_lock import FolderLock
from vit_lens_clip.methods.neurons.ablation import PAPER_TOP_FRACTION
from vit_lens_clip.methods.neurons.effects import check_supported, collect_layers
from vit_lens_clip.methods.neurons.segmentation import compare_segmentation
from vit_lens_clip.methods.neurons.study import NeuronStudy, run_study
from vit_lens_clip.methods.spatial.evaluate import segmentation_markdown
from vit_lens_clip.methods.textspan.pools import embed_texts_cached, load_pool
from vit_lens_clip.methods.zeroshot import build_classifier
from vit_lens_clip.viz.figures import bar_table, to_display_image
from vit_lens_clip.viz.html import figures_to_html

ABLATION_TITLES = {"baseline": "baseline", "all": "w/o all neurons", "significant": "w/o significant",
                   "insignificant": "w/o insignificant", "rank1": "rank-1 (r_n)", "text": "text reconstruction"}


@dataclass
class NeuronOptions:
    """Settings of the neuron study on the shapes world (scenes drawn from ``seed``)."""

    layers: Optional[Sequence[int]] = None  # default: every layer but the last
    task: str = "shape"
    n_reference: int = 2562
    n_eval: int = 1000
    pools: Sequence[str] = ("descriptions", "words")
    n_texts: int = 32
    normalization: str = "text"
    shares: bool = False
    top_fraction: float = PAPER_TOP_FRACTION
    segmentation_images: int = 150
    segmentation_layers: Optional[Sequence[int]] = None  # default: the last three analysed layers
    top_neurons: int = 200
    show_neurons: int = 6
    batch_size: int = 64
    seed: int = 0
    progress: bool = True


def pool_embeddings(loaded, pools: Sequence[str], progress: bool = True) -> tuple[list[str], torch.Tensor]:
    """Texts of the pools (first occurrence kept) and their unit embeddings, cached on disk per pool."""
    texts, rows = [], []
    for pool in pools:
        pool_texts = load_pool(pool)
        rows.append(embed_texts_cached(pool_texts, loaded.encode_text, loaded.key, progress=progress))
        texts += pool_texts
    first = {t: i for i, t in reversed(list(enumerate(texts)))}
    keep = sorted(first.values())
    return [texts[i] for i in keep], torch.cat(rows)[keep]


def default_layers(n_layers: int) -> list[int]:
    return list(range(n_layers - 1))


def add_neuron_study(out: ReportOutput, loaded, options: NeuronOptions) -> None:
    """Selectivity per layer, ablation table, variance explained, neuron texts and top images, segmentation:
    page parts, ``out.numbers["neurons"]`` and one CSV row per layer and measure."""
    model = loaded.model
    layers = [check_supported(model, l) for l in (options.layers or default_layers(model.cfg.n_layers))]
    texts, embeddings = pool_embeddings(loaded, options.pools, options.progress)
    classnames, templates = zero_shot_labels(options.task)
    reference = shapes_images(loaded.preprocess, options.n_reference, options.seed + 1000, options.task, options.progress)
    evaluation = shapes_images(loaded.preprocess, options.n_eval, options.seed + 2000, options.task, options.progress)
    study = run_study(loaded, layers, reference, evaluation, classnames, templates, task=options.task, texts=texts,
                      text_embeddings=embeddings, n_texts=options.n_texts, normalization=options.normalization,
                      top_fraction=options.top_fraction, shares=options.shares, batch_size=options.batch_size,
                      progress=options.progress)
    numbers: dict[str, Any] = {"task": options.task, "n_reference": study.n_reference, "n_eval": study.n_eval,
                               "top_fraction": options.top_fraction, "n_texts": options.n_texts,
                               "pool_size": len(texts), "normalization": options.normalization, "shares": options.shares,
                               "bytes_per_image": study.bytes_per_image,
                               "layers": {l: r.summary() for l, r in study.layers.items()}}
    items: list[tuple[str, Any]] = [("Second-order neurons: selectivity, variance explained, ablations", _layer_table(study))]
    items.append(("Second-order neurons: selectivity per neuron", _selectivity_histogram(study)))
    items.append((f"Second-order neurons: zero-shot {options.task} accuracy after mean-ablation",
                  bar_table({f"L{l}": {ABLATION_TITLES[k]: v for k, v in r.accuracy.items()} for l, r in study.layers.items()},
                            metrics=list(ABLATION_TITLES.values()), title="accuracy per layer and setting")))
    best_layer = max(study.layers, key=lambda l: study.layers[l].effect_size)
    items.append((f"Second-order neurons of layer {best_layer}: texts (OMP, {options.n_texts} per neuron, top 5 shown)",
                  _neuron_table(study, best_layer, options.show_neurons)))
    items.append((f"Second-order neurons of layer {best_layer}: top evaluation images",
                  _top_images(study, best_layer, options.show_neurons, loaded.preprocess)))
    numbers["described_layer"] = best_layer
    numbers["neurons"] = {str(n): texts for n, texts in _described(study, best_layer, options.show_neurons).items()}
    if options.segmentation_images > 0:
        seg_layers = list(options.segmentation_layers or layers[-3:])
        classnames, templates = zero_shot_labels("shape")
        classifier = build_classifier(loaded, classnames, templates)
        data = ShapesSegmentation(options.segmentation_images, loaded.preprocess, image_size=model.cfg.image_size[0],
                                  seed=options.seed + 3000, include_original=False)
        seg = compare_segmentation(loaded, data, classifier, {l: study.layers[l].directions for l in seg_layers},
                                   top=options.top_neurons, batch_size=options.batch_size, progress=options.progress)
        numbers["segmentation"] = {"layers": seg_layers, "top_neurons": options.top_neurons, **seg}
        titles = {"neurons": f"neurons (layers {seg_layers}, top {options.top_neurons} per class)",
                  "decomposition": "heads (decomposition)"}
        items.append((f"Second-order neurons: zero-shot segmentation beside the heads ({options.segmentation_images} scenes)",
                      segmentation_markdown(seg, titles=titles)))
    out.page.extend(items)
    out.numbers["neurons"] = numbers
    for layer, summary in numbers["layers"].items():
        for metric, value in summary.items():
            out.record("neurons", f"L{layer}.{metric}", value)


def _layer_table(study: NeuronStudy) -> str:
    head = ("| layer | significant on (mean / median) | ‖δ‖² share of top 2% | var. explained by r_n (mean / pooled) | "
            "by the text fit | baseline | w/o all | w/o significant | w/o insignificant | rank-1 | text |")
    lines = [head, "|" + "---|" * 11]
    for l, r in study.layers.items():
        s, a = r.summary(), r.accuracy
        lines.append(f"| {l} | {100 * s['selectivity_mean']:.2f}% / {100 * s['selectivity_median']:.2f}% | "
                     f"{100 * s['concentration_top2pct']:.1f}% | {100 * s['variance_explained_mean']:.1f}% / "
                     f"{100 * s['variance_explained_pooled']:.1f}% | "
                     f"{100 * s.get('text_variance_explained_pooled', float('nan')):.1f}% | "
                     + " | ".join(f"{100 * a[k]:.1f}"
                                  for k in ("baseline", "all", "significant", "insignificant", "rank1", "text")) + " |")
    return "\n".join(lines) + (
        f"\n\nReference set {study.n_reference} scenes (means, thresholds τ_n = the top {100 * PAPER_TOP_FRACTION:.2f}% "
        f"of ‖δ_n‖, directions), evaluation set {study.n_eval} other scenes. Accuracies in %, zero-shot {study.task}.")


def _selectivity_histogram(study: NeuronStudy) -> go.Figure:
    fig = go.Figure()
    for l, r in study.layers.items():
        fig.add_trace(go.Histogram(x=(100 * r.selectivity_eval).numpy(), name=f"L{l}", opacity=0.6, nbinsx=40))
    fig.update_layout(barmode="overlay", xaxis_title="% of evaluation images where the neuron is significant",
                      yaxis_title="neurons", width=720, height=380)
    return fig


def _ranked_neurons(study: NeuronStudy, layer: int, n: int) -> list[int]:
    r = study.layers[layer]
    return r.eval_norms.pow(2).mean(0).topk(n).indices.tolist()


def _described(study: NeuronStudy, layer: int, n: int) -> dict[int, list[tuple[str, float]]]:
    r = study.layers[layer]
    if r.code is None:
        return {}
    described = r.code.describe(study.texts, top=5)
    return {i: described[i] for i in _ranked_neurons(study, layer, n)}


def _neuron_table(study: NeuronStudy, layer: int, n: int) -> str:
    r = study.layers[layer]
    lines = ["| neuron | mean ‖δ‖² | significant on | var. by r_n | texts (coefficient) |", "|---|---|---|---|---|"]
    for i, described in _described(study, layer, n).items():
        words = ", ".join(f"{t} ({c:+.2f})" for t, c in described)
        lines.append(f"| {i} | {r.eval_norms[:, i].pow(2).mean():.3g} | {100 * r.selectivity_eval[i]:.1f}% | "
                     f"{100 * r.variance_explained[i]:.0f}% | {words} |")
    return "\n".join(lines)


def _top_images(study: NeuronStudy, layer: int, n: int, preprocess, per_neuron: int = 5) -> go.Figure:
    r = study.layers[layer]
    neurons = _ranked_neurons(study, layer, n)
    fig = make_subplots(rows=len(neurons), cols=per_neuron, horizontal_spacing=0.01, vertical_spacing=0.02,
                        row_titles=[f"n{i}" for i in neurons])
    for row, i in enumerate(neurons, start=1):
        for col, img in enumerate(r.eval_norms[:, i].topk(per_neuron).indices.tolist(), start=1):
            fig.add_trace(go.Image(z=to_display_image(study.eval_images[img], preprocess=preprocess)), row=row, col=col)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(width=110 * per_neuron + 80, height=110 * len(neurons) + 40, margin=dict(l=10, r=40, t=10, b=10))
    return fig


# ------------------------------------------------------------------------------------------------ command


def run_neurons_command(args: argparse.Namespace, loaded) -> dict[int | str, Any]:
    """``vit-lens-clip neurons``: writes results.json (and report.html / stats) under ``--out``; prints a summary.

    Returns the summary numbers: keyed by layer for ``collect``, by name otherwise. ``--out`` is locked for the
    run, and its files are put in place by renames (``app.run_folder.replace_files``: never through a symlink).
    """
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with FolderLock(out, "--out"):
        return _run_neurons(args, loaded, out)


def _run_neurons(args: argparse.Namespace, loaded, out: Path) -> dict[int | str, Any]:
    layers = args.layers or default_layers(loaded.model.cfg.n_layers)
    if args.action == "collect":
        images, labels = shapes_images(loaded.preprocess, args.n_reference, args.seed + 1000, args.task, not args.quiet)
        stats = collect_layers(loaded.model, images, layers, labels, args.batch_size, args.shares, not args.quiet)

        def save_layers(folder: Path) -> None:
            for l, s in stats.items():
                save_file({k: getattr(s, k).contiguous() for k in s.TENSORS}, str(folder / f"second_order_L{l}.safetensors"),
                          metadata={"layer": str(l), "later": json.dumps(s.later)})

        replace_files(out, save_layers)
        numbers = {}
        for l, s in stats.items():
            numbers[l] = {"images": len(s), "bytes_per_image": s.bytes_per_image()}
            print(f"layer {l}: {len(s)} images, {s.bytes_per_image()} bytes per image "
                  f"-> {out / f'second_order_L{l}.safetensors'}")
        return numbers
    options = NeuronOptions(layers=layers, task=args.task, n_reference=args.n_reference, n_eval=args.n_eval,
                            pools=args.pools, n_texts=args.n_texts, normalization=args.normalization, shares=args.shares,
                            segmentation_images=args.segmentation_images if args.action in ("report", "segment") else 0,
                            top_neurons=args.top_neurons, batch_size=args.batch_size, seed=args.seed, progress=not args.quiet)
    written = ReportOutput()
    add_neuron_study(written, loaded, options)
    numbers = written.numbers["neurons"]

    def write(folder: Path) -> None:
        (folder / "results.json").write_text(json.dumps(numbers, indent=1, default=_jsonable))
        if args.action == "report":
            page = figures_to_html(written.page, title=f"Second-order neurons: {loaded.name}")
            (folder / "report.html").write_text(page, encoding="utf-8")

    replace_files(out, write)
    keep = {"describe": ("texts",), "ablate": ("selectivity",), "segment": ("segmentation",)}.get(args.action)
    for title, content in written.page:
        if isinstance(content, str) and (keep is None or any(k in title for k in keep)):
            print(f"\n## {title}\n\n{content}")
    if args.action == "report":
        print(f"\nwrote {out / 'report.html'} and results.json")
    return numbers


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)
