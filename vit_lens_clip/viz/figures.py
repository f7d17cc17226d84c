"""Plotly figures for the library's results: heatmap overlays, head × layer grids, ablation curves, grouped bars.

Every function returns a ``plotly.graph_objects.Figure``; nothing here writes files or loads scripts
(``vit_lens_clip.viz.html`` puts figures on an offline page).

Images may be a PIL image, a uint8 array [H, W, 3] (or [H, W]), a float array in [0, 1], or a preprocessed
tensor [3, H, W] whose ``Normalize`` is undone with ``mean``/``std`` (or read from ``preprocess``):

    pixel = clamp(x · std + mean, 0, 1) · 255

Maps may be a patch grid [grid_h, grid_w] (upsampled bilinearly to the image size, as in
``spatial.heatmaps.heatmap_to_pixels``) or already a pixel map [H, W]; NaN pixels stay transparent.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Bool, Float, UInt8
from plotly.subplots import make_subplots
from torch import Tensor

from vit_lens_clip.datasets.geometry import upsample_patch_map

ImageLike = Any  # PIL.Image.Image | np.ndarray [H, W, 3] | Tensor [3, H, W]
MapLike = Float[Tensor, "rows cols"] | np.ndarray

DEFAULT_COLORSCALE = "Jet"


# ----------------------------------------------------------------------------------------------- inputs
def _normalize_from_preprocess(preprocess: Callable) -> tuple[Sequence[float] | None, Sequence[float] | None]:
    """(mean, std) of the first transform in ``preprocess`` that has both (torchvision ``Normalize``)."""
    steps = getattr(preprocess, "transforms", [preprocess])
    for step in steps:
        if hasattr(step, "mean") and hasattr(step, "std"):
            return list(np.atleast_1d(step.mean)), list(np.atleast_1d(step.std))
    return None, None


def to_display_image(
    image: ImageLike,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    preprocess: Callable | None = None,
) -> np.ndarray:
    """A uint8 RGB array [H, W, 3] for display.

    Tensors [3, H, W] (or [1, 3, H, W]) are channel-first model inputs: ``x · std + mean`` when a normalisation
    is given (directly or through ``preprocess``), else min-max scaled to [0, 1]. Arrays and PIL images are
    channel-last; float arrays are taken to lie in [0, 1].
    """
    if preprocess is not None and mean is None and std is None:
        mean, std = _normalize_from_preprocess(preprocess)
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std (or neither)")
    if isinstance(image, Tensor):
        x = image.detach().float().cpu()
        if x.ndim == 4 and x.shape[0] == 1:
            x = x[0]
        if x.ndim != 3 or x.shape[0] not in (1, 3):
            raise ValueError(f"a tensor image must be [3, H, W] (channel-first), got {tuple(image.shape)}")
        if mean is not None:
            m = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
            s = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
            x = x * s + m
        else:
            x = (x - x.min()) / (x.max() - x.min()).clamp(min=1e-12)
        x = x.expand(3, -1, -1)
        return (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    if mean is not None:
        raise ValueError("mean/std only apply to a preprocessed (channel-first) tensor image")
    array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"an array image must be [H, W, 3] (channel-last), got {array.shape}")
    array = array[..., :3]
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if np.issubdtype(array.dtype, np.floating):
        return (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    return np.clip(array, 0, 255).astype(np.uint8)


def map_to_pixels(heatmap: MapLike, image_hw: tuple[int, int]) -> np.ndarray:
    """A float32 map [H, W] at the image size: pixel maps pass through, patch grids are upsampled bilinearly."""
    x = torch.as_tensor(np.asarray(heatmap.detach().cpu() if isinstance(heatmap, Tensor) else heatmap))
    while x.ndim > 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 2:
        raise ValueError(f"a map must be [rows, cols] (one image), got shape {tuple(x.shape)}")
    x = x.float()
    if tuple(x.shape) != tuple(image_hw):
        x = upsample_patch_map(x, image_hw)
    return x.numpy().astype(np.float32)


def _finite_range(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo > 1e-6 * max(1.0, abs(lo), abs(hi)):
        return lo, hi
    return lo - 0.5, hi + 0.5  # a constant map (up to float error): one mid colour


def _image_axes(fig: go.Figure, n_panels: int) -> None:
    """Image panels: no ticks, y pointing down, one pixel square (axis k anchored to x_k)."""
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, constrain="domain")
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, constrain="domain", autorange="reversed")
    for k in range(1, n_panels + 1):
        suffix = "" if k == 1 else str(k)
        fig.layout[f"yaxis{suffix}"].scaleanchor = f"x{suffix}"


def _overlay_traces(
    pixels: np.ndarray, z: np.ndarray, opacity: float, colorscale: Any, zmin: float, zmax: float, showscale: bool,
    name: str,
) -> tuple[go.Image, go.Heatmap]:
    image = go.Image(z=pixels, name="image", hoverinfo="skip")
    heat = go.Heatmap(
        z=z, zmin=zmin, zmax=zmax, colorscale=colorscale, opacity=opacity, showscale=showscale, name=name,
        hovertemplate="x=%{x}, y=%{y}<br>value=%{z:.4g}<extra>" + html.escape(name) + "</extra>",
    )
    return image, heat


# ------------------------------------------------------------------------------------------------ overlays
def heatmap_overlay(
    image: ImageLike,
    heatmap: MapLike,
    title: str | None = None,
    opacity: float = 0.5,
    colorscale: Any = DEFAULT_COLORSCALE,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    preprocess: Callable | None = None,
    zmin: float | None = None,
    zmax: float | None = None,
    size: int = 420,
) -> go.Figure:
    """The image with a map drawn over it (two traces: ``go.Image`` then a ``go.Heatmap`` at the image's size).

    A patch grid [grid_h, grid_w] is upsampled bilinearly to [H, W]; the colour range defaults to the map's
    finite min and max.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must lie in [0, 1], got {opacity}")
    pixels = to_display_image(image, mean, std, preprocess)
    z = map_to_pixels(heatmap, pixels.shape[:2])
    lo, hi = _finite_range(z)
    image_trace, heat = _overlay_traces(pixels, z, opacity, colorscale, lo if zmin is None else zmin,
                                        hi if zmax is None else zmax, True, title or "map")
    fig = go.Figure([image_trace, heat])
    _image_axes(fig, 1)
    h, w = pixels.shape[:2]
    fig.update_layout(
        title=html.escape(title) if title else None,
        width=int(size * w / max(h, w)) + 120,
        height=int(size * h / max(h, w)) + (70 if title else 30),
        margin={"l": 10, "r": 10, "t": 50 if title else 10, "b": 10},
    )
    return fig


def _panel_colorbar(fig: go.Figure, panel: int) -> dict[str, Any]:
    """A slim colour bar just right of subplot ``panel`` (1-based, row-major), as tall as the subplot."""
    suffix = "" if panel == 1 else str(panel)
    x_domain, y_domain = fig.layout[f"xaxis{suffix}"].domain, fig.layout[f"yaxis{suffix}"].domain
    return {"x": x_domain[1] + 0.005, "xanchor": "left", "y": (y_domain[0] + y_domain[1]) / 2, "yanchor": "middle",
            "len": y_domain[1] - y_domain[0], "thickness": 10, "tickfont": {"size": 9}}


def overlay_grid(
    image: ImageLike,
    maps: Mapping[str, MapLike],
    cols: int = 4,
    title: str | None = None,
    opacity: float = 0.5,
    colorscale: Any = DEFAULT_COLORSCALE,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    preprocess: Callable | None = None,
    shared_scale: bool = False,
    panel_size: int = 200,
) -> go.Figure:
    """Several maps on one image, one subplot each (``go.Image`` + ``go.Heatmap`` per panel, row-major).

    Each panel uses its own colour range, with its own colour bar beside it, unless ``shared_scale`` (then one
    range over all maps and one colour bar).
    """
    if not maps:
        raise ValueError("maps is empty")
    if cols < 1:
        raise ValueError(f"cols must be >= 1, got {cols}")
    pixels = to_display_image(image, mean, std, preprocess)
    hw = pixels.shape[:2]
    zs = {name: map_to_pixels(m, hw) for name, m in maps.items()}
    shared = _finite_range(np.concatenate([z.ravel() for z in zs.values()])) if shared_scale else None
    cols = min(cols, len(zs))
    rows = math.ceil(len(zs) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[html.escape(n) for n in zs],
                        horizontal_spacing=0.02 if shared_scale else 0.1, vertical_spacing=0.08 if rows > 1 else 0.0)
    for i, (name, z) in enumerate(zs.items()):
        lo, hi = shared or _finite_range(z)
        image_trace, heat = _overlay_traces(pixels, z, opacity, colorscale, lo, hi, not shared_scale or i == 0, name)
        if not shared_scale:
            heat.colorbar = _panel_colorbar(fig, i + 1)
        fig.add_trace(image_trace, row=i // cols + 1, col=i % cols + 1)
        fig.add_trace(heat, row=i // cols + 1, col=i % cols + 1)
    _image_axes(fig, rows * cols)
    h, w = hw
    bars = 0 if shared_scale else 60 * cols  # room for one colour bar per column
    fig.update_layout(
        title=html.escape(title) if title else None, width=int(panel_size * w / max(h, w)) * cols + 60 + bars,
        height=int(panel_size * h / max(h, w)) * rows + 40 * rows + (60 if title else 20),
        margin={"l": 10, "r": 10, "t": 70 if title else 40, "b": 10},
    )
    return fig


# ------------------------------------------------------------------------------------------ head × layer
def _hover_cell(entry: Any) -> str:
    if entry is None:
        return ""
    if isinstance(entry, str):
        return html.escape(entry)
    return "<br>".join(html.escape(str(e)) for e in entry)


def layer_head_grid(
    values: Float[Tensor, "n_layers n_heads"] | np.ndarray,
    layer_labels: Sequence[Any] | None = None,
    head_labels: Sequence[Any] | None = None,
    hover_text: Sequence[Sequence[Any]] | Mapping[tuple[int, int], Any] | None = None,
    title: str = "per head",
    colorscale: Any = "Viridis",
    value_format: str = ".3g",
    zmin: float | None = None,
    zmax: float | None = None,
) -> go.Figure:
    """A heatmap with one cell per (layer, head): rows = layers (first layer at the bottom), columns = heads.

    ``hover_text`` gives each cell extra lines (e.g. a head's top TextSpan texts): an ``[L][H]`` nested list of
    strings or lists of strings, or a dict {(layer, head): text(s)}. NaN cells (heads not computed) are blank.
    """
    z = np.asarray(values.detach().cpu().double() if isinstance(values, Tensor) else values, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"values must be [n_layers, n_heads], got shape {z.shape}")
    n_layers, n_heads = z.shape
    layer_labels = [f"L{l}" for l in range(n_layers)] if layer_labels is None else [str(l) for l in layer_labels]
    head_labels = [f"H{h}" for h in range(n_heads)] if head_labels is None else [str(h) for h in head_labels]
    if len(layer_labels) != n_layers or len(head_labels) != n_heads:
        raise ValueError(f"{len(layer_labels)} layer / {len(head_labels)} head labels for a {z.shape} grid")
    extra = [["" for _ in range(n_heads)] for _ in range(n_layers)]
    if hover_text is not None:
        if isinstance(hover_text, Mapping):
            for (l, h), entry in hover_text.items():
                extra[l][h] = _hover_cell(entry)
        else:
            if len(hover_text) != n_layers or any(len(row) != n_heads for row in hover_text):
                raise ValueError(f"hover_text must be [{n_layers}][{n_heads}]")
            extra = [[_hover_cell(e) for e in row] for row in hover_text]
    heat = go.Heatmap(
        z=z, x=head_labels, y=layer_labels, customdata=np.array(extra, dtype=object), colorscale=colorscale,
        zmin=zmin, zmax=zmax, xgap=1, ygap=1,
        hovertemplate="%{y} %{x}: %{z:" + value_format + "}<br>%{customdata}<extra></extra>",
    )
    fig = go.Figure(heat)
    fig.update_layout(
        title=html.escape(title), xaxis_title="head", yaxis_title="layer",
        width=max(360, 34 * n_heads + 180), height=max(300, 24 * n_layers + 140),
        xaxis={"type": "category"}, yaxis={"type": "category"},
    )
    return fig


# ------------------------------------------------------------------------------------------------ curves
def ablation_curve(
    curves: Mapping[str, Sequence[tuple[int, float]]],
    baseline: float | None = None,
    title: str = "Cumulative mean-ablation of layers [0, k)",
    x_title: str = "k (layers mean-ablated, from the first)",
    y_title: str = "top-1 accuracy",
    baseline_name: str = "no ablation",
) -> go.Figure:
    """One line per curve of (k, accuracy) points (``ablation.cumulative_layer_curve``), plus a dashed
    horizontal line at ``baseline`` when given. Accuracies in [0, 1] are shown as percentages."""
    if not curves:
        raise ValueError("curves is empty")
    fig = go.Figure()
    all_k, all_acc = [], []
    for name, points in curves.items():
        points = list(points)
        if not points or any(len(p) != 2 for p in points):
            raise ValueError(f"curve {name!r} must be a non-empty list of (k, accuracy) pairs")
        ks, accs = [int(k) for k, _ in points], [float(a) for _, a in points]
        all_k += ks
        all_acc += accs
        fig.add_trace(go.Scatter(x=ks, y=accs, mode="lines+markers", name=str(name)))
    if baseline is not None:
        all_acc.append(float(baseline))
        fig.add_trace(go.Scatter(
            x=[min(all_k), max(all_k)], y=[float(baseline)] * 2, mode="lines", name=baseline_name,
            line={"dash": "dash", "color": "#555"},
        ))
    as_fraction = all(0.0 <= a <= 1.0 for a in all_acc)
    fig.update_layout(
        title=html.escape(title), xaxis_title=x_title, yaxis_title=y_title, width=640, height=420,
        xaxis={"dtick": 1 if max(all_k) - min(all_k) <= 16 else None},
        yaxis={"tickformat": ".0%"} if as_fraction else {},
    )
    return fig


def bar_table(
    rows: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] = ("average", "worst_group"),
    metric_titles: Mapping[str, str] | None = None,
    title: str = "Accuracy per method",
    y_title: str = "accuracy",
) -> go.Figure:
    """Grouped bars: methods on the x axis, one bar (trace) per metric, e.g. average vs worst-group accuracy
    of each spurious-cue method. Missing metrics are left out of their group."""
    if not rows:
        raise ValueError("rows is empty")
    if not metrics:
        raise ValueError("metrics is empty")
    metric_titles = dict(metric_titles or {})
    methods = [str(m) for m in rows]
    fig = go.Figure()
    values = []
    for metric in metrics:
        ys = [float(r[metric]) if metric in r and r[metric] is not None else None for r in rows.values()]
        values += [y for y in ys if y is not None]
        fig.add_trace(go.Bar(
            x=methods, y=ys, name=metric_titles.get(metric, metric.replace("_", " ")),
            text=[None if y is None else (f"{100 * y:.1f}" if 0 <= y <= 1 else f"{y:.3g}") for y in ys],
            textposition="outside",
        ))
    as_fraction = bool(values) and all(0.0 <= v <= 1.0 for v in values)
    fig.update_layout(
        title=html.escape(title), barmode="group", yaxis_title=y_title, width=max(480, 130 * len(methods) + 200),
        height=420, yaxis={"tickformat": ".0%", "range": [0, 1.08]} if as_fraction else {},
    )
    return fig


def segmentation_example_figure(
    name: str,
    image: UInt8[np.ndarray, "H W 3"],
    ground_truth: Bool[np.ndarray, "H W"],
    soft_maps: Mapping[str, Float[np.ndarray, "H W"]],
    masks: Mapping[str, Bool[np.ndarray, "H W"]],
    titles: Mapping[str, str] | None = None,
) -> go.Figure:
    """One image of a segmentation benchmark: the image over its ground truth, then per method its soft map
    (in [0, 1]) over its predicted mask. ``titles`` name the methods in the top row (default: their keys)."""
    methods = list(soft_maps)
    if set(masks) != set(methods):
        raise ValueError(f"soft_maps and masks must name the same methods, got {methods} and {list(masks)}")
    titles = dict(titles or {})
    cols = 1 + len(methods)
    subplot_titles = ["image"] + [titles.get(m, m) for m in methods] + ["ground truth"] + [f"{m} mask" for m in methods]
    fig = make_subplots(rows=2, cols=cols, subplot_titles=subplot_titles, horizontal_spacing=0.01,
                        vertical_spacing=0.08)
    fig.add_trace(go.Image(z=image), row=1, col=1)
    grey = [[0, "#111111"], [1, "#f5f5f5"]]
    fig.add_trace(go.Heatmap(z=ground_truth.astype(np.uint8), colorscale=grey, showscale=False, zmin=0, zmax=1),
                  row=2, col=1)
    for j, m in enumerate(methods, start=2):
        soft = np.round(soft_maps[m].astype(np.float64), 3)
        fig.add_trace(go.Heatmap(z=soft, colorscale="Viridis", zmin=0, zmax=1, showscale=False), row=1, col=j)
        fig.add_trace(go.Heatmap(z=masks[m].astype(np.uint8), colorscale=grey, zmin=0, zmax=1, showscale=False),
                      row=2, col=j)
    fig.update_xaxes(showticklabels=False, constrain="domain")
    fig.update_yaxes(showticklabels=False, autorange="reversed", constrain="domain")
    for r in (1, 2):
        for c in range(1, cols + 1):
            k = (r - 1) * cols + c  # subplot k draws on axes xk / yk (k = 1 is plain "x")
            fig.update_yaxes(scaleanchor="x" if k == 1 else f"x{k}", row=r, col=c)
    fig.update_layout(title=html.escape(name), height=420, width=190 * cols + 40,
                      margin={"l": 10, "r": 10, "t": 70, "b": 10})
    return fig
