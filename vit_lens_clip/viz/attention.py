"""Attention patterns of one ViT layer for one image, as an offline HTML view (circuitsvis) or a plotly figure.

Token order is the model's: position 0 is CLS, then the patches row-major (``r{row}c{col}``), as in
``HookedViT.embed`` (``blocks.{l}.attn.hook_pattern`` is [batch, head, query, source]).

circuitsvis normally emits HTML that imports its JavaScript from a CDN. It also ships the same bundle in the
wheel (``circuitsvis/dist/cdn/iife.js``, an IIFE that defines the global ``CircuitsVis``), so here the bundle
is inlined in a classic ``<script>`` and the ``AttentionHeads`` component is rendered from it: no network
needed. ViT attention is bidirectional, so the view is built with ``maskUpperTri: false`` (circuitsvis masks
the upper triangle by default, which suits causal language models only). Without the bundle, the same
pattern is drawn as a plotly heatmap (one trace per head, a menu to switch heads).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float
from torch import Tensor

from vit_lens_clip.viz.html import circuitsvis_bundle_path, circuitsvis_script, figure_html, plotly_script

CIRCUITSVIS_COMPONENT = "AttentionHeads"


def patch_labels(grid_h: int, grid_w: int, cls_label: str | None = "CLS") -> list[str]:
    """Token labels in the model's order: ``cls_label`` (omitted when None), then ``r{i}c{j}`` row-major."""
    if grid_h < 1 or grid_w < 1:
        raise ValueError(f"grid must be at least 1 x 1, got {grid_h} x {grid_w}")
    labels = [] if cls_label is None else [cls_label]
    return labels + [f"r{i}c{j}" for i in range(grid_h) for j in range(grid_w)]


def _as_pattern(pattern) -> np.ndarray:
    x = np.asarray(pattern.detach().float().cpu() if isinstance(pattern, Tensor) else pattern, dtype=np.float64)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[1] != x.shape[2]:
        raise ValueError(f"pattern must be [heads, n_tokens, n_tokens] for one image and layer, got {x.shape}")
    return x


def _labels_for(n_tokens: int, labels: Sequence[str] | None) -> list[str]:
    if labels is None:
        side = round((n_tokens - 1) ** 0.5)
        if side * side != n_tokens - 1:
            raise ValueError(f"cannot guess a square grid for {n_tokens} tokens: pass labels (see patch_labels)")
        return patch_labels(side, side)
    labels = [str(t) for t in labels]
    if len(labels) != n_tokens:
        raise ValueError(f"{len(labels)} labels for {n_tokens} tokens")
    return labels


def _head_names(n_heads: int, head_names: Sequence[str] | None) -> list[str]:
    names = [f"Head {h}" for h in range(n_heads)] if head_names is None else [str(n) for n in head_names]
    if len(names) != n_heads:
        raise ValueError(f"{len(names)} head names for {n_heads} heads")
    return names


# ------------------------------------------------------------------------------------------- circuitsvis
def _json_for_script(value) -> str:
    return json.dumps(value, separators=(",", ":")).replace("</", "<\\/")


def circuitsvis_view(component: str, props: dict, include_bundle: bool = True) -> str:
    """HTML that renders a circuitsvis React ``component`` with ``props`` from the inlined bundle.

    Props travel as a JSON ``<script type="application/json">`` block between the target ``<div>`` and the
    script that renders into it.
    """
    from circuitsvis.utils.convert_props import convert_props

    props_json = convert_props(props).replace("</", "<\\/")
    # The script finds its own <div> and props next to it and gives the div a fresh id, so the same fragment
    # may appear on a page more than once.
    render = (
        "(function(){var s=document.currentScript,data=s.previousElementSibling,div=data.previousElementSibling;"
        "div.id='cv-'+Math.random().toString(36).slice(2);"
        "CircuitsVis.render(div.id,CircuitsVis[" + _json_for_script(component) + "],JSON.parse(data.textContent));})();"
    )
    return (
        (circuitsvis_script() if include_bundle else "")
        + '<div class="circuitsvis-view" style="margin:15px 0;"></div>'
        + f'<script type="application/json" class="circuitsvis-props">{props_json}</script>'
        + f"<script>{render}</script>"
    )


# ------------------------------------------------------------------------------------------------ plotly
def attention_pattern_figure(
    pattern: Float[Tensor, "heads query source"] | np.ndarray,
    labels: Sequence[str] | None = None,
    head_names: Sequence[str] | None = None,
    title: str = "Attention pattern (query → source)",
    colorscale: str = "Blues",
) -> go.Figure:
    """The full pattern (no mask) as a heatmap per head, rows = queries, columns = sources, token labels on
    both axes; a dropdown switches heads (one ``go.Heatmap`` trace per head, only the first visible)."""
    x = _as_pattern(pattern)
    n_heads, n_tokens, _ = x.shape
    labels = _labels_for(n_tokens, labels)
    names = _head_names(n_heads, head_names)
    fig = go.Figure()
    for h in range(n_heads):
        fig.add_trace(go.Heatmap(
            z=x[h].astype(np.float32), x=labels, y=labels, colorscale=colorscale, zmin=0.0,
            zmax=float(max(x.max(), 1e-12)), visible=h == 0, name=names[h],
            hovertemplate="query %{y} → source %{x}: %{z:.4f}<extra>" + html.escape(names[h]) + "</extra>",
        ))
    if n_heads > 1:
        buttons = [
            {"label": names[h], "method": "update",
             "args": [{"visible": [k == h for k in range(n_heads)]}, {"title": f"{title}: {names[h]}"}]}
            for h in range(n_heads)
        ]
        fig.update_layout(updatemenus=[{"buttons": buttons, "direction": "down", "x": 1.0, "xanchor": "right",
                                        "y": 1.12, "yanchor": "top"}])
    side = int(min(900, max(360, 6 * n_tokens + 160)))
    fig.update_layout(
        title=f"{title}: {names[0]}", width=side + 80, height=side,
        xaxis={"title": "source", "type": "category", "tickangle": -90},
        yaxis={"title": "query", "type": "category", "autorange": "reversed", "scaleanchor": "x"},
    )
    return fig


# ----------------------------------------------------------------------------------------------- public
def attention_patterns_html(
    pattern: Float[Tensor, "heads query source"] | np.ndarray,
    labels: Sequence[str] | None = None,
    head_names: Sequence[str] | None = None,
    decimals: int = 4,
    backend: str = "auto",
    include_library: bool = True,
) -> str:
    """An offline HTML view of one image's pattern at one layer ([heads, N, N], e.g. ``hook_pattern[b]``).

    ``backend``: "circuitsvis" (its ``AttentionHeads`` view, upper triangle shown), "plotly"
    (``attention_pattern_figure``) or "auto" (circuitsvis when its bundle is installed). ``include_library``
    inlines the JavaScript library (set False when the page already has it; ``figures_to_html`` dedupes it
    anyway). Values are rounded to ``decimals`` places to keep the page small.
    """
    if backend not in ("auto", "circuitsvis", "plotly"):
        raise ValueError("backend must be 'auto', 'circuitsvis' or 'plotly'")
    x = np.round(_as_pattern(pattern), decimals)
    labels = _labels_for(x.shape[1], labels)
    names = _head_names(x.shape[0], head_names)
    use_circuitsvis = backend == "circuitsvis" or (backend == "auto" and circuitsvis_bundle_path() is not None)
    if use_circuitsvis:
        props = {
            "attention": x.tolist(), "tokens": labels, "attentionHeadNames": names,
            "maskUpperTri": False, "minValue": 0.0, "maxValue": float(max(x.max(), 1e-12)),
        }
        return circuitsvis_view(CIRCUITSVIS_COMPONENT, props, include_bundle=include_library)
    return (plotly_script() if include_library else "") + figure_html(attention_pattern_figure(x, labels, names))
