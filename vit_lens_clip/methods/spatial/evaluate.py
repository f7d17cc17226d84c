"""Zero-shot segmentation benchmark: the decomposition heatmap against attention and gradient baselines.

Every method gives a patch map per image; all of them then go through the same steps (docs/segmentation.md):
bilinear upsampling to pixels, ``zero_shot_segment`` (clip below 0, min-max normalise, foreground above the
mean) and ``SegmentationMetrics`` (pixel accuracy, mIoU, mAP).

Texts: the decomposition map uses the published text, the predicted class's classifier column minus the mean
column. The gradient baselines (GradCAM, Chefer et al.) differentiate the score of the predicted class's
column, as their papers explain the predicted class. Raw attention and rollout take no text.

Also here: the report's table and files (CSV, Markdown; the HTML page is drawn by ``vit_lens_clip.viz.pages``).
The cost of each map over a plain forward is timed by ``vit_lens_clip.app.benchmarks.heatmaps.bench_heatmaps``.
The ``segment`` command (and its shapes-world default) is ``vit_lens_clip.app.segment``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from vit_lens_clip.datasets.segmentation import segmentation_loader
from vit_lens_clip.methods.spatial.heatmaps import predict_classes
from vit_lens_clip.methods.spatial.metrics import SegmentationMetrics, segment_batch
from vit_lens_clip.methods.spatial.registry import MAP_METHODS
from vit_lens_clip.model.hooked_vit import HookedViT
from vit_lens_clip.viz.figures import segmentation_example_figure
from vit_lens_clip.viz.pages import segmentation_page

METHODS: tuple[str, ...] = tuple(MAP_METHODS)
METHOD_TITLES: dict[str, str] = {name: method.title for name, method in MAP_METHODS.items()}
REPORT_METRICS = ("pixel_accuracy", "miou", "mean_ap")


def _check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    methods = tuple(methods)
    unknown = [m for m in methods if m not in MAP_METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown or no methods {unknown or methods}; choose from {tuple(MAP_METHODS)}")
    return methods


def method_maps(
    model: HookedViT,
    images: Float[Tensor, "batch channel height width"],
    classifier: Float[Tensor, "d_out n_classes"],
    methods: Sequence[str] = METHODS,
    labels: Optional[Int[Tensor, " batch"]] = None,
) -> dict[str, Float[Tensor, "batch grid_h grid_w"]]:
    """Patch maps of every method for a batch; ``labels`` default to the zero-shot predictions."""
    methods = _check_methods(methods)
    classifier = classifier.to(model.W_proj.device).float()
    images = images.to(model.W_patch.device)
    if labels is None:
        labels = predict_classes(model, images, classifier)
    maps = {method: MAP_METHODS[method].compute(model, images, classifier, labels) for method in methods}
    return {k: v.detach().float().cpu() for k, v in maps.items()}


def evaluate_segmentation(
    loaded,
    dataset: Dataset,
    classifier: Float[Tensor, "d_out n_classes"],
    methods: Sequence[str] = METHODS,
    batch_size: int = 8,
    limit: Optional[int] = None,
    progress: bool = True,
    frame: str = "model",
    threshold="mean",
    ap_mode: str = "foreground",
    keep: Optional[dict[str, list[Tensor]]] = None,
) -> dict[str, dict[str, float]]:
    """Pixel accuracy, mIoU and mAP of each method's zero-shot segmentation over ``dataset``.

    ``keep`` (a dict): filled with the per-batch predicted ``"labels"`` and each method's maps (CPU tensors, in
    dataset order), for a caller that scores other maps on the same images without recomputing these.

    ``loaded`` is a ``LoadedCLIP`` (or anything with ``.model``, a HookedViT); ``dataset`` yields the items of
    ``vit_lens_clip.datasets.segmentation`` (``image`` model input, ``mask`` in the model frame). ``frame``
    "model" scores in the model-input frame; "original" carries each map back onto the original image and
    scores against the original mask (pixels cropped away are left out).
    """
    methods = _check_methods(methods)
    if frame not in ("model", "original"):
        raise ValueError(f"frame must be 'model' or 'original', got {frame!r}")
    model: HookedViT = loaded.model
    image_size = model.cfg.image_size
    metrics = {m: SegmentationMetrics(ap_mode=ap_mode) for m in methods}
    for batch in tqdm(segmentation_loader(dataset, batch_size, limit), desc="segmentation", disable=not progress):
        labels = None
        if keep is not None:
            labels = predict_classes(model, batch["image"].to(model.W_patch.device), classifier.to(model.W_proj.device).float())
            keep.setdefault("labels", []).append(labels.cpu())
        maps = method_maps(model, batch["image"], classifier, methods, labels)
        for method in methods:
            if keep is not None:
                keep.setdefault(method, []).append(maps[method])
            for soft, pred, gt in segment_batch(maps[method], batch, frame, image_size, threshold):
                metrics[method].update(soft, pred, gt)
    return {m: metrics[m].compute() for m in methods}


# ------------------------------------------------------------------------------------------------ examples
@dataclass
class SegmentationExample:
    """One image for the report: the picture, its ground truth, and each method's soft map and mask."""

    name: str
    image: np.ndarray  # uint8 [H, W, 3]
    ground_truth: np.ndarray  # bool [H, W]
    soft_maps: dict[str, np.ndarray] = field(default_factory=dict)  # float [H, W] in [0, 1]
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # bool [H, W]


def _normalize_step(preprocess: Callable):
    for step in getattr(preprocess, "transforms", []) or []:
        if hasattr(step, "mean") and hasattr(step, "std"):
            return step
    return None


def displayable_image(model_input: Float[Tensor, "channel H W"], preprocess: Optional[Callable] = None) -> np.ndarray:
    """Undo the preprocess ``Normalize`` (or min-max scale when there is none): uint8 [H, W, 3]."""
    x = model_input.detach().float().cpu()
    step = _normalize_step(preprocess) if preprocess is not None else None
    if step is not None:
        x = x * torch.tensor(step.std)[:, None, None] + torch.tensor(step.mean)[:, None, None]
    else:
        x = (x - x.min()) / (x.max() - x.min()).clamp(min=1e-12)
    return (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def segmentation_examples(
    loaded,
    dataset: Dataset,
    classifier: Float[Tensor, "d_out n_classes"],
    methods: Sequence[str] = METHODS,
    n_examples: int = 4,
    frame: str = "model",
    threshold="mean",
) -> list[SegmentationExample]:
    """The first ``n_examples`` images with every method's soft map and mask (for the report)."""
    methods = _check_methods(methods)
    model: HookedViT = loaded.model
    batch = next(iter(segmentation_loader(dataset, n_examples, n_examples)))
    maps = method_maps(model, batch["image"], classifier, methods)
    per_method = {m: segment_batch(maps[m], batch, frame, model.cfg.image_size, threshold) for m in methods}
    examples = []
    for i in range(batch["image"].shape[0]):
        if frame == "original":
            image = batch["original_image"][i].numpy()
            gt = batch["original_mask"][i].numpy()
        else:
            image = displayable_image(batch["image"][i], getattr(loaded, "preprocess", None))
            gt = batch["mask"][i].numpy()
        example = SegmentationExample(str(batch["name"][i]), image, gt.astype(bool))
        for m in methods:
            soft, pred, _ = per_method[m][i]
            example.soft_maps[m] = soft.numpy()
            example.masks[m] = pred.numpy()
        examples.append(example)
    return examples


# -------------------------------------------------------------------------------------------------- report
def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


SEGMENTATION_NOTE = ("Percent. Maps upsampled bilinearly, clipped below 0, min-max normalised; "
                     "foreground = pixels above the map's mean.")


def segmentation_table(results: Mapping[str, Mapping[str, float]],
                       titles: Mapping[str, str] | None = None) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the segmentation table: per map its title (``titles``, then ``METHOD_TITLES``, then
    its key), pixel accuracy, mIoU and mAP (percent, 2 decimals, "n/a" when undefined) and the number of
    images; cells are strings. The one table of every segmentation result (benchmark, report, neurons, SAE)."""
    names = {**METHOD_TITLES, **(titles or {})}
    header = ["method", "Pixel Acc", "mIoU", "mAP", "images"]
    rows = [[names.get(method, method), *(_fmt(r[k]) for k in REPORT_METRICS), str(r.get("n_images", ""))]
            for method, r in results.items()]
    return header, rows


def segmentation_markdown(results: Mapping[str, Mapping[str, float]], title: str | None = None,
                          titles: Mapping[str, str] | None = None) -> str:
    """``segmentation_table`` as Markdown, with the note on how maps become masks; a ``# title`` heading
    first when ``title`` is given (a page that has its own heading gives none)."""
    header, rows = segmentation_table(results, titles)
    lines = [f"# {title}", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", SEGMENTATION_NOTE]
    return "\n".join(lines) + "\n"


def write_segmentation_report(
    results: dict[str, dict[str, float]],
    examples: Sequence[SegmentationExample],
    out_dir: str | Path,
    title: str = "Zero-shot segmentation",
    skipped: Sequence[tuple[str, str]] = (),
) -> dict[str, Path]:
    """Write ``segmentation.csv`` (every metric), ``segmentation.md`` (the table) and ``segmentation.html``
    (the table plus image / heatmap / mask overlays per method, drawn by ``viz.pages.segmentation_page``;
    plotly.js inlined once, works offline). Inputs the dataset left out (``skipped``: (file, reason)) are
    listed in ``segmentation_skipped.csv`` and at the end of the Markdown and HTML."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "segmentation.csv", "markdown": out / "segmentation.md", "html": out / "segmentation.html",
             "skipped": out / "segmentation_skipped.csv"}
    with open(paths["skipped"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "reason"])
        writer.writerows([str(name), str(reason)] for name, reason in skipped)
    skipped = [(str(name), str(reason)) for name, reason in skipped]
    skipped_md = "".join(f"\n- {name}: {reason}" for name, reason in skipped)
    skipped_note = f"\n\nSkipped inputs ({len(skipped)}):{skipped_md}\n" if skipped else ""

    keys = sorted({k for r in results.values() for k in r}, key=lambda k: (k not in REPORT_METRICS, k))
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", *keys])
        for method, r in results.items():
            writer.writerow([method, *[r.get(k, "") for k in keys]])
    paths["markdown"].write_text(segmentation_markdown(results, title) + skipped_note)

    header, rows = segmentation_table(results)
    figures = [segmentation_example_figure(e.name, e.image, e.ground_truth, e.soft_maps, e.masks, METHOD_TITLES)
               for e in examples]
    page = segmentation_page(header, rows, figures, skipped, title, note=SEGMENTATION_NOTE)
    paths["html"].write_text(page, encoding="utf-8")
    return paths

