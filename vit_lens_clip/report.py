"""The main job, ``vit-lens-clip report``: the whole analysis on one model, as an offline HTML page plus
JSON and CSV of every number.

Sections: the layer mean-ablation curves; TextSpan for the last layers (variance explained, completeness);
text heatmaps and joint head×patch maps; zero-shot segmentation against the baselines; the spurious-cue table;
an attention-pattern view. Defaults: the embedded shapes model and built-in synthetic scenes.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from vit_lens_clip.ablation import cumulative_layer_curve
from vit_lens_clip.app.run_folder import check_report_inputs, finish_report_folder, prepare_report_folder, report_settings
from vit_lens_clip.datasets.folder import ImageFolder
from vit_lens_clip.datasets.shapes_world import ATTRIBUTES, ShapesDataset, label_of
from vit_lens_clip.decompose import Decomposition, MeanReducer, StackReducer, run_reducers
from vit_lens_clip.loading import LoadedCLIP, load_clip
from vit_lens_clip.zeroshot import accuracy, build_classifier, logits

SECTIONS = ("ablation", "textspan", "completeness", "heatmaps", "segmentation", "spurious", "attention")
SIMPLE_TEMPLATES = (lambda c: f"a photo of a {c}.", lambda c: f"a {c}.", lambda c: f"an image of a {c}.")


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="vit_lens_clip_report", help="output folder")
    p.add_argument("--images", default=None, help="a folder of images (class sub-folders give labels)")
    p.add_argument("--classes", default=None,
                   help="class names, one per line: for unlabelled --images, or one per class folder (sorted) to rename them")
    p.add_argument("--texts", default="descriptions", help="TextSpan pool: descriptions, words, or a file")
    p.add_argument("--n-images", type=int, default=500, help="synthetic scenes when --images is not given")
    p.add_argument("--last-layers", type=int, default=4, help="layers whose heads TextSpan explains")
    p.add_argument("--k", type=int, default=10, help="TextSpan texts per head")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--segmentation-images", type=int, default=150)
    p.add_argument("--spurious-images", type=int, default=400)
    p.add_argument("--spurious-bird-size", default=None, choices=["small", "large"],
                   help="bird glyph size in the spurious-cue set (default: the training size, small)")
    p.add_argument("--spurious-queries", nargs="*", default=None,
                   help="texts that pick the role heads from their TextSpan texts (default: the shapes world's "
                        "place phrases, 'on water', 'on grass', ...)")
    p.add_argument("--skip", nargs="*", default=[], choices=SECTIONS, help="sections to leave out")
    p.add_argument("--queries", nargs="*", default=["a colour", "a shape", "a location in the image", "a place", "a number of objects"],
                   help="texts for the 'which heads span this text' search")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true",
                   help="reuse a non-empty --out that is not a report of the same settings (removes only files a report wrote)")


# ------------------------------------------------------------------------------------------ data


class ShapesScenes(ShapesDataset):
    """Held-out synthetic scenes with every attribute's label; items follow ``datasets.folder``'s format."""

    def __init__(self, n: int, preprocess: Callable, seed: int = 0, task: str = "shape"):
        super().__init__(n, seed)
        self.preprocess, self.task = preprocess, task
        self.scenes = [self.scene(i) for i in range(n)]
        self.attribute_labels = {a: [label_of(s.attributes, a) for s in self.scenes] for a in ATTRIBUTES}

    def __getitem__(self, i: int) -> dict[str, Any]:
        label = self.attribute_labels[self.task][i]
        return {"index": i, "name": f"scene-{i}", "label": -1 if label is None else label,
                "image": self.preprocess(self.scenes[i].pil())}


@dataclass
class Task:
    """A zero-shot task: classifier columns, per-image labels (−1 = undefined for that image)."""

    name: str
    classnames: list[str]
    classifier: torch.Tensor
    labels: torch.Tensor


@dataclass
class ReportState:
    out: Path
    loaded: LoadedCLIP
    timings: dict[str, float] = field(default_factory=dict)
    numbers: dict[str, Any] = field(default_factory=dict)
    sections: list[tuple[str, Any]] = field(default_factory=list)
    csv_rows: list[dict[str, Any]] = field(default_factory=list)

    def timed(self, name: str):
        state = self

        class _Timer:
            def __enter__(self):
                self.t0 = time.perf_counter()
                print(f"[report] {name} ...", flush=True)

            def __exit__(self, *exc):
                state.timings[name] = round(time.perf_counter() - self.t0, 2)

        return _Timer()

    def record(self, section: str, metric: str, value: Any, **extra: Any) -> None:
        self.csv_rows.append({"section": section, "metric": metric, "value": value, **extra})


def _tasks(state: ReportState, dataset: Dataset, args) -> list[Task]:
    loaded = state.loaded
    if isinstance(dataset, ShapesScenes):
        from vit_lens_clip.datasets.shapes_world import zero_shot_labels

        tasks = []
        for attribute in ("shape", "colour", "position", "place", "count"):
            names, templates = zero_shot_labels(attribute)
            labels = torch.tensor([-1 if v is None else v for v in dataset.attribute_labels[attribute]])
            tasks.append(Task(attribute, names, build_classifier(loaded, names, templates), labels))
        return tasks
    assert isinstance(dataset, ImageFolder)
    if dataset.classes:
        names = [c.replace("_", " ") for c in dataset.classes]
        if args.classes:  # e.g. ImageNet folders named by WordNet id: readable names, one per folder, in order
            names = [line.strip() for line in Path(args.classes).read_text().splitlines() if line.strip()]
            if len(names) != len(dataset.classes):
                raise ValueError(f"--classes has {len(names)} names for {len(dataset.classes)} class folders")
        labels = torch.tensor(dataset.labels)
    elif args.classes:
        names = [line.strip() for line in Path(args.classes).read_text().splitlines() if line.strip()]
        labels = None
    else:
        return []
    classifier = build_classifier(loaded, names, SIMPLE_TEMPLATES)
    if labels is None:  # unlabelled: the model's own predictions are the reference (agreement curves)
        labels = torch.full((len(dataset),), -1)
    return [Task("classes", names, classifier, labels)]


def _load_dataset(state: ReportState, args) -> Dataset:
    if args.images:
        root = Path(args.images)
        labelled = root.is_dir() and any(p.is_dir() for p in root.iterdir())
        return ImageFolder(root, state.loaded.preprocess, labelled=labelled)
    return ShapesScenes(args.n_images, state.loaded.preprocess, seed=args.seed)


# --------------------------------------------------------------------------------------- sections


def _collect(state: ReportState, dataset: Dataset, args):
    """One pass over the data: per-image folded parts (normalised by ‖y‖) and their dataset means."""
    from vit_lens_clip.textspan.runs import HeadContributions, kept_layers

    model = state.loaded.model
    layers = kept_layers(model.cfg.n_layers, args.last_layers)
    stack, means = StackReducer(), MeanReducer()
    summary = run_reducers(model, dataset, [stack, means], batch_size=args.batch_size, layers=layers,
                           normalize=True, progress=not args.quiet)
    if summary.skipped:
        state.numbers["skipped_images"] = summary.skipped
        print(f"[report] skipped {len(summary.skipped)} unreadable images (listed in results.json)")
    rows, mu = stack.result(), means.result()
    parts = Decomposition(rows["embed"], rows["attns"], rows["mlps"], rows["heads"], layers, rows["embedding"],
                          "equal_share", True)
    contributions = HeadContributions(
        heads=rows["heads"], layers=layers, embed=rows["embed"], embedding=rows["embedding"],
        labels=rows.get("labels"), indices=rows["indices"], means=mu, normalized=True, n_layers=model.cfg.n_layers,
    )
    return parts, mu, contributions


def _ablation_section(state: ReportState, parts: Decomposition, means, tasks: list[Task], indices) -> None:
    from vit_lens_clip.viz.figures import ablation_curve

    figures, table = [], {}
    for task in tasks:
        labels = task.labels[indices]
        if (labels < 0).all():  # unlabelled: agreement with the unablated model's predictions
            labels = logits(parts.embedding, task.classifier).argmax(-1)
        keep = labels >= 0
        sub = Decomposition(parts.embed[keep], parts.attns[keep], parts.mlps[keep], parts.heads[keep], parts.layers,
                            parts.embedding[keep], parts.convention, parts.normalized)
        curves = {kind: cumulative_layer_curve(sub, means, task.classifier, labels[keep], kind=kind)
                  for kind in ("attn", "mlp")}
        baseline = curves["attn"][0][1]
        table[task.name] = {"baseline": baseline, **{f"{k}_curve": v for k, v in curves.items()}}
        for kind, curve in curves.items():
            for k, acc in curve:
                state.record("ablation", f"{task.name}.{kind}.top1", acc, layers_ablated=k)
        figures.append((task.name, ablation_curve({f"attention layers ({task.name})": curves["attn"],
                                       f"MLPs ({task.name})": curves["mlp"]}, baseline=baseline,
                                      title=f"{task.name}: mean-ablating layers [0, k) post-hoc")))
    state.numbers["ablation"] = table
    lines = ["| task | baseline top-1 | all attention layers but the last 4 ablated | all MLPs ablated |", "|---|---|---|---|"]
    n_layers = parts.attns.shape[1]
    for name, row in table.items():
        attn = dict(row["attn_curve"])[max(0, n_layers - 4)]
        mlp = dict(row["mlp_curve"])[n_layers]
        lines.append(f"| {name} | {row['baseline']:.3f} | {attn:.3f} | {mlp:.3f} |")
    state.sections.append(("Layer mean-ablation", "\n".join(lines)))
    state.sections.extend((f"Ablation curve ({name})", fig) for name, fig in figures)


def _textspan_section(state: ReportState, contributions, tasks: list[Task], args):
    from vit_lens_clip.textspan import embed_texts_cached, load_pool
    from vit_lens_clip.textspan.runs import TextSpanTable
    from vit_lens_clip.viz.figures import layer_head_grid

    pool = load_pool(args.texts)
    pool_emb = embed_texts_cached(pool, state.loaded.encode_text, state.loaded.key)
    table = TextSpanTable.compute(contributions, pool_emb, pool, k=args.k, title=f"TextSpan ({args.texts}, k={args.k})")
    files = table.write(state.out, "textspan")
    total = torch.zeros(len(contributions.layers), contributions.n_heads)
    hover = {}
    for (layer, head), row in table.rows.items():
        i = contributions.layers.index(layer)
        total[i, head] = float(row.variance_explained.sum())
        hover[(i, head)] = "<br>".join(table.texts((layer, head))[:5])
    grid = layer_head_grid(total, layer_labels=[f"L{l}" for l in contributions.layers], hover_text=hover,
                           title=f"variance explained by {args.k} TextSpan texts")
    state.numbers["textspan"] = json.loads(table.to_json())
    state.sections += [("TextSpan: variance explained per head", grid),
                       ("TextSpan texts per head", Path(files["html"]).read_text() if "html" in files else table.to_markdown())]
    for (layer, head), row in table.rows.items():
        state.record("textspan", f"L{layer}H{head}.variance_explained", float(row.variance_explained.sum()),
                     texts=" | ".join(table.texts((layer, head))))
    _head_search(state, contributions, pool_emb, args)
    return table, pool, pool_emb


def _head_search(state: ReportState, contributions, pool_emb, args) -> None:
    """Which heads span a text: heads ranked by the share of their variance along each query's direction."""
    from vit_lens_clip.textspan.runs import heads_for_queries

    queries = list(args.queries)
    lines = ["| query | top heads (share of the head's variance along the query) |", "|---|---|"]
    found = {}
    for query in queries:
        ranked = heads_for_queries(contributions, state.loaded, [query], top=3, centre_with=pool_emb)
        found[query] = [(f"L{l}H{h}", round(score, 4)) for (l, h), score in ranked]
        lines.append(f"| {query} | " + ", ".join(f"L{l}H{h} ({score:.3f})" for (l, h), score in ranked) + " |")
        for (l, h), score in ranked:
            state.record("head_search", f"{query}.L{l}H{h}", score)
    state.numbers["head_search"] = found
    state.sections.append(("Which heads span a text", "\n".join(lines)))


def _completeness_section(state: ReportState, contributions, pool_emb, tasks: list[Task]) -> None:
    from vit_lens_clip.textspan.runs import completeness, completeness_figure

    results = {}
    for task in tasks[:1]:
        labels = task.labels[contributions.indices]
        keep = labels >= 0
        if keep.sum() == 0:
            continue
        table = completeness(contributions.subset(keep), pool_emb, task.classifier, labels[keep])
        results[task.name] = table.to_dict()
        state.sections += [(f"Completeness ({task.name})", table.to_markdown()),
                           (f"Completeness figure ({task.name})", completeness_figure(table))]
        for row in table.rows:
            state.record("completeness", f"{task.name}.top1", row["top1"], k=row["k"])
    state.numbers["completeness"] = results


def _heatmap_section(state: ReportState, textspan_table, tasks: list[Task], args) -> None:
    from vit_lens_clip.spatial.evaluate import ShapesSegmentation
    from vit_lens_clip.spatial.heatmaps import class_heatmap, joint_map, text_heatmap
    from vit_lens_clip.viz.figures import overlay_grid

    loaded, model = state.loaded, state.loaded.model
    if args.images:
        data = ImageFolder(args.images, loaded.preprocess)
        items = [data[i] for i in range(min(4, len(data)))]
        images = torch.stack([it["image"] for it in items if it.get("error") is None])
    else:
        data = ShapesSegmentation(4, loaded.preprocess, seed=args.seed + 99, include_original=False)
        images = torch.stack([data[i]["image"] for i in range(4)])
    images = images.to(loaded.device)
    task = tasks[0] if tasks else None
    best = sorted(textspan_table.rows.items(), key=lambda kv: -float(kv[1].variance_explained[0]))[:3] if textspan_table else []
    for b in range(images.shape[0]):
        maps = {}
        x = images[b : b + 1]
        if task is not None:
            maps[f"predicted {task.name} (class − mean)"] = class_heatmap(model, x, task.classifier.to(loaded.device))[0]
        for text in ("an object", "the background"):
            maps[f"'{text}'"] = text_heatmap(model, x, loaded.encode_text([text]))[0, 0]
        for (layer, head), row in best:
            text = textspan_table.texts((layer, head))[0]
            maps[f"L{layer}H{head}: '{text}'"] = joint_map(model, x, layer, head, loaded.encode_text([text]))[0]
        fig = overlay_grid(x[0].cpu(), {k: v.detach().cpu() for k, v in maps.items()}, cols=3,
                           preprocess=loaded.preprocess, title=f"image {b}: text heatmaps and joint head×patch maps")
        state.sections.append((f"Heatmaps, image {b}", fig))


def _segmentation_section(state: ReportState, args) -> None:
    from vit_lens_clip.spatial.evaluate import (
        METHOD_TITLES, ShapesSegmentation, evaluate_segmentation, segmentation_markdown, shapes_classes,
    )

    loaded = state.loaded
    names, templates = shapes_classes()
    classifier = build_classifier(loaded, names, templates)
    dataset = ShapesSegmentation(args.segmentation_images, loaded.preprocess, seed=args.seed + 1, include_original=False)
    results = evaluate_segmentation(loaded, dataset, classifier, batch_size=min(args.batch_size, 32), progress=not args.quiet)
    state.numbers["segmentation"] = results
    state.sections.append(("Zero-shot segmentation (synthetic scenes, exact masks)", segmentation_markdown(results)))
    for method, metrics in results.items():
        for metric in ("pixel_accuracy", "miou", "mean_ap"):
            state.record("segmentation", f"{METHOD_TITLES.get(method, method)}.{metric}", metrics[metric])


def _spurious_section(state: ReportState, pool, pool_emb, args) -> None:
    from vit_lens_clip.spurious import run_spurious, shapes_eval_set, shapes_group_names
    from vit_lens_clip.viz.figures import bar_table

    from vit_lens_clip.datasets.shapes_world import TRAIN_BIRD_SIZE
    from vit_lens_clip.spurious import SHAPES_PLACE_QUERIES

    bird_size = args.spurious_bird_size or TRAIN_BIRD_SIZE
    queries = args.spurious_queries or list(SHAPES_PLACE_QUERIES)
    dataset = shapes_eval_set(state.loaded.preprocess, args.spurious_images, args.seed + 2, bird_size)
    table = run_spurious(state.loaded, dataset, group_names=shapes_group_names(), pool=pool,
                         pool_embeddings=pool_emb, k=args.k, last_n_layers=args.last_layers,
                         batch_size=args.batch_size, queries=queries, progress=not args.quiet)
    data = table.to_dict()
    data["queries"] = list(queries)
    state.numbers["spurious"] = data
    state.sections.append((f"Spurious cue: landbird vs waterbird ({bird_size} birds; role heads picked by "
                           f"{', '.join(repr(q) for q in queries)})", table.to_markdown()))
    rows = {r["setting"]: {"average": r["average"], "worst_group": r["worst_group"]} for r in data["rows"]}
    state.sections.append(("Spurious cue: accuracy per setting", bar_table(rows)))
    from vit_lens_clip.spurious import dataset_cue_and_class_effects, effects_markdown

    n_layers = state.loaded.model.cfg.n_layers
    effects = dataset_cue_and_class_effects(state.loaded, dataset, table.classifier,
                                            batch_size=args.batch_size,
                                            layers=list(range(max(0, n_layers - args.last_layers), n_layers)),
                                            progress=not args.quiet)
    data["effects"] = [{"part": e.component, "cue": e.cue, "class": e.label} for e in effects]
    state.sections.append(("Spurious cue: which parts carry the place and which the bird (shifts of the "
                           "waterbird−landbird cosine margin; top 8 by place effect)", effects_markdown(effects, top=8)))
    for setting, row in rows.items():
        for metric, value in row.items():
            state.record("spurious", f"{setting}.{metric}", value)


def _attention_section(state: ReportState, dataset: Dataset) -> None:
    from vit_lens_clip.viz.attention import attention_patterns_html, patch_labels

    model = state.loaded.model
    item = next(dataset[i] for i in range(len(dataset)) if dataset[i].get("error") is None)
    last = model.cfg.n_layers - 1
    name = f"blocks.{last}.attn.hook_pattern"
    _, cache = model.run_with_cache(item["image"][None].to(state.loaded.device), names_filter=[name])
    html = attention_patterns_html(cache[name][0].float().cpu(), labels=patch_labels(*model.cfg.grid_size))
    state.sections.append((f"Attention patterns, last layer (L{last})", html))


# ------------------------------------------------------------------------------------------ main


def run_report(args: argparse.Namespace) -> Path:
    """Run every section not in ``args.skip`` and write report.html, results.json and results.csv."""
    from vit_lens_clip.viz.html import figures_to_html

    t_start = time.perf_counter()
    check_report_inputs(args)
    out, kept_files = prepare_report_folder(args.out, report_settings(args), getattr(args, "overwrite", False))
    torch.manual_seed(args.seed)
    state = ReportState(out, load_clip(args.model, args.pretrained, device=args.device, precision=args.precision))
    cfg = state.loaded.model.cfg
    state.numbers["model"] = {"name": state.loaded.name, "pretrained": state.loaded.pretrained,
                              "layers": cfg.n_layers, "heads": cfg.n_heads, "width": cfg.d_model,
                              "tokens": cfg.n_ctx, "activation": cfg.act_fn, "pooling": cfg.pool_type}
    skip = set(args.skip)
    with torch.no_grad():
        with state.timed("data"):
            dataset = _load_dataset(state, args)
            tasks = _tasks(state, dataset, args)
        with state.timed("decomposition"):
            parts, means, contributions = _collect(state, dataset, args)
        state.numbers["zero_shot"] = {}
        for task in tasks:
            labels = task.labels[contributions.indices]
            keep = labels >= 0
            if keep.any():
                acc = accuracy(logits(parts.embedding[keep], task.classifier), labels[keep], topk=(1,))["top1"]
                state.numbers["zero_shot"][task.name] = acc
                state.record("zero_shot", f"{task.name}.top1", acc)
        if state.numbers["zero_shot"]:
            lines = ["| task | zero-shot top-1 |", "|---|---|"]
            lines += [f"| {k} | {v:.3f} |" for k, v in state.numbers["zero_shot"].items()]
            state.sections.append(("Zero-shot accuracy", "\n".join(lines)))
        if "ablation" not in skip and tasks:
            with state.timed("ablation"):
                _ablation_section(state, parts, means, tasks, contributions.indices)
        textspan_table = pool = pool_emb = None
        if "textspan" not in skip:
            with state.timed("textspan"):
                textspan_table, pool, pool_emb = _textspan_section(state, contributions, tasks, args)
            if "completeness" not in skip and tasks:
                with state.timed("completeness"):
                    _completeness_section(state, contributions, pool_emb, tasks)
    if "heatmaps" not in skip:
        with state.timed("heatmaps"):
            _heatmap_section(state, textspan_table, tasks, args)
    if "segmentation" not in skip:
        with state.timed("segmentation"):
            _segmentation_section(state, args)
    if "spurious" not in skip and pool_emb is not None:
        with state.timed("spurious"):
            _spurious_section(state, pool, pool_emb, args)
    if "attention" not in skip:
        with state.timed("attention"):
            _attention_section(state, dataset)
    state.timings["total"] = round(time.perf_counter() - t_start, 2)
    state.numbers["timings_s"] = state.timings
    intro = (f"Model **{state.loaded.name}** ({cfg.n_layers} layers, {cfg.n_heads} heads, width {cfg.d_model}, "
             f"{cfg.n_ctx} tokens). Parts are folded through the final LayerNorm (equal-share convention) and "
             f"divided by the embedding norm. Wall time {state.timings['total']:.0f} s.")
    page = figures_to_html([("About this report", intro)] + state.sections, title=f"vit_lens_clip report: {state.loaded.name}")
    (out / "report.html").write_text(page, encoding="utf-8")
    (out / "results.json").write_text(json.dumps(state.numbers, indent=1, default=_jsonable))
    with open(out / "results.csv", "w", newline="") as f:
        keys = sorted({k for row in state.csv_rows for k in row}, key=lambda k: (k not in ("section", "metric", "value"), k))
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(state.csv_rows)
    finish_report_folder(out, report_settings(args), kept_files)
    print(f"[report] wrote {out / 'report.html'}, results.json, results.csv in {state.timings['total']:.0f} s")
    for name, seconds in state.timings.items():
        print(f"  {name:14s} {seconds:8.1f} s")
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)
