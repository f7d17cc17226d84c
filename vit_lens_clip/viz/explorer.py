"""The explorer site's pages (``vit-lens-clip explore``): an overview of layers × heads with a search box, and one
page per head at a stable address (``heads/L{l}H{h}.html``) with its top examples and their maps, its TextSpan
descriptions and the texts nearest its mean direct effect. Left/right arrow keys go to the previous/next head.

Every page is written by the one HTML writer (``viz.html.figures_to_html``); the figures are plotly; images
are PNG files beside the pages, loaded lazily. Nothing is loaded from a URL: the site works from ``file://``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from vit_lens_clip.viz.html import RawHTML, escape, figures_to_html, html_table

__all__ = ["HeadView", "SiteData", "head_page_name", "overlay_png", "write_site"]

THUMB = 128  # pixels per panel of an example image


@dataclass
class HeadView:
    """What a head's page shows: share of the embedding, TextSpan descriptions (text, variance explained),
    nearest pool texts of its mean direct effect (text, cosine), top examples (dataset index, score) and their
    PNG images (original | map overlay), None where the images could not be re-read."""

    layer: int
    head: int
    share: float
    descriptions: list[tuple[str, float]]
    nearest: list[tuple[str, float]]
    examples: list[tuple[int, float]]
    images: list[Optional[bytes]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"L{self.layer}H{self.head}"


@dataclass
class SiteData:
    """The whole site: the heads in layer-major order and the search table (cosine of every pool text with
    every head's mean direct effect, [n_texts, n_heads])."""

    title: str
    n_images: int
    layers: list[int]
    n_heads: int
    units: list[HeadView]
    pool: list[str]
    search_scores: Tensor


def head_page_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}.html"


def _colormap(x: np.ndarray) -> np.ndarray:
    """A blue → yellow → red ramp for values in [0, 1]: [..., 3] uint8."""
    r = np.clip(2 * x, 0, 1)
    g = np.clip(2 - 2 * np.abs(2 * x - 1) - 0.6 * x, 0, 1)
    b = np.clip(1 - 2 * x, 0, 1)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def overlay_png(image: Tensor, patch_map: Tensor) -> bytes:
    """PNG bytes of [original | original with the min-max normalised map blended over it], each THUMB px.

    image: [3, H, W] in [0, 1]; patch_map: [grid_h, grid_w], upsampled bilinearly to the image.
    """
    h, w = image.shape[-2:]
    up = F.interpolate(patch_map[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    up = (up - up.min()) / (up.max() - up.min()).clamp_min(1e-12)
    rgb = (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    blend = (0.5 * rgb + 0.5 * _colormap(up.numpy())).astype(np.uint8)
    panels = [Image.fromarray(a).resize((THUMB, THUMB), Image.NEAREST) for a in (rgb, blend)]
    canvas = Image.new("RGB", (2 * THUMB + 4, THUMB), "white")
    canvas.paste(panels[0], (0, 0))
    canvas.paste(panels[1], (THUMB + 4, 0))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


_EXTRA_CSS = """<style>
.examples { display: flex; flex-wrap: wrap; gap: 0.8em; }
.examples figure { margin: 0; font-size: 0.85em; }
.examples img { width: 260px; height: 128px; image-rendering: pixelated; border: 1px solid #ccc; }
.unitnav { display: flex; gap: 1.5em; margin: 0.5em 0 1em 0; }
.grid td a { text-decoration: none; }
#search-results li { margin: 0.2em 0; }
</style>"""


def _keys_script(previous: Optional[str], following: Optional[str]) -> str:
    """Left/right arrow keys go to the previous/next unit (ignored while typing in a field)."""
    return ("<script>document.addEventListener('keydown', function (e) {"
            "if (e.target && (e.target.tagName === 'INPUT' || e.target.tagName === 'TEXTAREA')) return;"
            f"var prev = {json.dumps(previous)}, next = {json.dumps(following)};"
            "if (e.key === 'ArrowLeft' && prev) window.location.href = prev;"
            "if (e.key === 'ArrowRight' && next) window.location.href = next;"
            "});</script>")


def _nav(previous: Optional[str], index: str, following: Optional[str]) -> str:
    parts = [f"<a id='prev' href='{escape(previous)}'>&larr; previous</a>" if previous else "<span></span>",
             f"<a id='overview' href='{escape(index)}'>overview</a>",
             f"<a id='next' href='{escape(following)}'>next &rarr;</a>" if following else "<span></span>"]
    return "<div class='unitnav'>" + "".join(parts) + "</div>"


def _head_page(data: SiteData, u: int) -> str:
    view = data.units[u]
    previous = head_page_name(data.units[u - 1].layer, data.units[u - 1].head) if u > 0 else None
    following = head_page_name(data.units[u + 1].layer, data.units[u + 1].head) if u + 1 < len(data.units) else None
    figures = []
    for rank, ((index, score), png) in enumerate(zip(view.examples, view.images)):
        caption = f"#{rank + 1}: image {index}, score {score:.3f}"
        if png is None:
            figures.append(f"<figure><figcaption>{escape(caption)}</figcaption></figure>")
        else:
            src = f"../img/{view.name}_{rank}.png"
            figures.append(f"<figure><img loading='lazy' src='{src}' alt='{escape(caption)}'>"
                           f"<figcaption>{escape(caption)}</figcaption></figure>")
    examples = RawHTML(
        "<p>Images with the highest score along the head's first principal direction (its contribution to the "
        "image embedding · that direction); left: the image, right: the head's map of that direction "
        "(<code>joint_map</code>, min-max normalised).</p><div class='examples'>" + "".join(figures) + "</div>")
    scores = go.Figure(go.Bar(x=[f"#{r + 1}" for r in range(len(view.examples))], y=[s for _, s in view.examples]))
    scores.update_layout(height=220, margin=dict(l=40, r=10, t=10, b=30), yaxis_title="score")
    sections = [
        ("Head", RawHTML(_EXTRA_CSS + _nav(previous, "../index.html", following)
                         + f"<p>Layer {view.layer}, head {view.head}: share of the embedding "
                           f"{100 * view.share:.2f}% (mean of ĉ·y/‖y‖² over {data.n_images} images). "
                           "Keys: ← previous head, → next head.</p>"
                         + _keys_script(previous, following))),
        ("Top examples", [examples, scores]),
        ("TextSpan descriptions", RawHTML(html_table(["text", "variance explained"],
                                                      [[t, f"{v:.3f}"] for t, v in view.descriptions]))
         if view.descriptions else "No TextSpan run (--textspan-k 0)."),
        ("Nearest texts of its mean direct effect", RawHTML(html_table(
            ["text", "cosine"], [[t, f"{c:.3f}"] for t, c in view.nearest]))),
    ]
    return figures_to_html(sections, title=f"{view.name} · {data.title}", table_of_contents=False)


_SEARCH_SCRIPT = """<script>
(function () {
  var data = JSON.parse(document.getElementById('search-data').textContent);
  var box = document.getElementById('search'), out = document.getElementById('search-results');
  var note = document.getElementById('search-note');
  function words(s) { return s.toLowerCase().split(/\\s+/).filter(function (w) { return w.length; }); }
  function hasWord(text, w) {
    var esc = w.replace(/[.*+?^${}()|[\\]\\\\]/g, '\\\\$&');
    return new RegExp('\\\\b' + esc + '\\\\b').test(text);
  }
  function search() {
    var q = box.value.trim().toLowerCase(), ws = words(q);
    out.innerHTML = '';
    if (!ws.length) { note.textContent = ''; return; }
    var rows = [];
    data.texts.forEach(function (t, i) { if (t.toLowerCase() === q) rows.push(i); });
    if (!rows.length) data.texts.forEach(function (t, i) {
      var low = t.toLowerCase();
      if (ws.every(function (w) { return hasWord(low, w); })) rows.push(i);
    });
    note.textContent = rows.length ? rows.length + ' pool text(s) match' : 'no pool text matches: try a word of the pool';
    if (!rows.length) return;
    var scores = data.units.map(function (_, u) {
      var s = 0; rows.forEach(function (r) { s += data.scores[r][u]; }); return s / rows.length;
    });
    var order = data.units.map(function (_, u) { return u; });
    order.sort(function (a, b) { return scores[b] - scores[a] || a - b; });
    order.slice(0, 10).forEach(function (u) {
      var li = document.createElement('li'), a = document.createElement('a');
      a.href = 'heads/' + data.units[u] + '.html'; a.textContent = data.units[u];
      li.appendChild(a); li.appendChild(document.createTextNode(' cosine ' + scores[u].toFixed(3)));
      out.appendChild(li);
    });
  }
  box.addEventListener('input', search);
  var initial = new URLSearchParams(window.location.search).get('q');
  if (initial) { box.value = initial; search(); }
})();
</script>"""


def _overview(data: SiteData) -> str:
    by_key = {(v.layer, v.head): v for v in data.units}
    rows = []
    for layer in data.layers:
        cells = [f"<th>layer {layer}</th>"]
        for h in range(data.n_heads):
            v = by_key[(layer, h)]
            first = escape(v.descriptions[0][0]) if v.descriptions else ""
            cells.append(f"<td><a href='heads/{v.name}.html'>{v.name}</a> {100 * v.share:.1f}%<br>"
                         f"<small>{first}</small></td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "<tr><th></th>" + "".join(f"<th>head {h}</th>" for h in range(data.n_heads)) + "</tr>"
    grid = RawHTML("<table class='grid'>" + header + "".join(rows) + "</table>")
    share = go.Figure(go.Heatmap(
        z=[[100 * by_key[(layer, h)].share for h in range(data.n_heads)] for layer in data.layers],
        x=[f"head {h}" for h in range(data.n_heads)], y=[f"layer {layer}" for layer in data.layers],
        colorscale="Viridis", colorbar=dict(title="% of y")))
    share.update_layout(height=120 + 40 * len(data.layers), margin=dict(l=60, r=10, t=10, b=30))
    payload = {"texts": data.pool, "units": [v.name for v in data.units],
               "scores": [[round(float(x), 4) for x in row] for row in data.search_scores.tolist()]}
    blob = json.dumps(payload, separators=(",", ":")).replace("</", "<\\/")
    search = RawHTML(
        "<p>Type a word or a text of the pool (e.g. <code>red</code>, <code>a blue star</code>): heads are ranked "
        "by the mean cosine of the matching pool texts' embeddings with each head's mean direct effect.</p>"
        "<input id='search' type='search' placeholder='search heads by text' size='40' autocomplete='off'> "
        "<span id='search-note'></span><ol id='search-results'></ol>"
        f"<script type='application/json' id='search-data'>{blob}</script>" + _SEARCH_SCRIPT)
    first = head_page_name(data.units[0].layer, data.units[0].head) if data.units else None
    sections = [
        ("Search", [RawHTML(_EXTRA_CSS), search]),
        ("Heads", [RawHTML(f"<p>{len(data.units)} heads of layers {data.layers}, {data.n_images} images. Each cell: "
                           "the head's page, its share of the embedding, its first TextSpan description. "
                           "Key →: the first head.</p>"
                           + _keys_script(None, f"heads/{first}" if first else None)), grid]),
        ("Share of the embedding", share),
    ]
    return figures_to_html(sections, title=f"Explorer · {data.title}")


def write_site(data: SiteData, out: str | Path) -> Path:
    """Write index.html, heads/L{l}H{h}.html and img/*.png under ``out``; returns ``out``."""
    out = Path(out)
    (out / "heads").mkdir(parents=True, exist_ok=True)
    (out / "img").mkdir(exist_ok=True)
    for u, view in enumerate(data.units):
        for rank, png in enumerate(view.images):
            if png is not None:
                (out / "img" / f"{view.name}_{rank}.png").write_bytes(png)
        (out / "heads" / head_page_name(view.layer, view.head)).write_text(_head_page(data, u), encoding="utf-8")
    (out / "index.html").write_text(_overview(data), encoding="utf-8")
    return out
