"""The explorer site's pages (``vit-lens-clip explore``): an overview of layers × heads with a search box, and one
page per head at a stable address (``heads/L{l}H{h}.html``) with its top examples and their maps, its TextSpan
descriptions and the texts nearest its mean direct effect. Left/right arrow keys go to the previous/next head.

Every page is written by the one HTML writer (``viz.html.figures_to_html``); the figures are plotly; images
are PNG files beside the pages, loaded lazily. Nothing is loaded from a URL: the site works from ``file://``.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import plotly.graph_objects as go
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from vit_lens_clip.viz.html import RawHTML, escape, figures_to_html, html_table

__all__ = ["HeadView", "SiteData", "head_page_name", "image_png", "overlay_png", "query_direction", "query_examples",
           "rank_units", "write_site"]

THUMB = 128  # pixels per panel of an example image
SEARCH_EXAMPLES = 8  # images shown under each of the first three heads a search finds


@dataclass
class HeadView:
    """What a head's page shows: share of the embedding, TextSpan descriptions (text, variance explained),
    nearest pool texts of its mean direct effect (text, cosine), top examples (dataset index, score) and their
    PNG images (original | map overlay), None where the images could not be re-read; likewise the bottom
    examples (lowest score first) when they were kept."""

    layer: int
    head: int
    share: float
    descriptions: list[tuple[str, float]]
    nearest: list[tuple[str, float]]
    examples: list[tuple[int, float]]
    images: list[Optional[bytes]] = field(default_factory=list)
    bottom: list[tuple[int, float]] = field(default_factory=list)
    bottom_images: list[Optional[bytes]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"L{self.layer}H{self.head}"


@dataclass
class SiteData:
    """The whole site: the heads in layer-major order and what the search needs: the pool's unit text
    embeddings [n_texts, D], each head's unit mean direct effect [n_heads, D] and, for small folders, every
    image's head contributions [n, n_heads, D] (rows of dataset ``indices``) with image ``thumbnails`` (PNG by
    dataset index), from which the search shows each found head's top images along the query."""

    title: str
    n_images: int
    layers: list[int]
    n_heads: int
    units: list[HeadView]
    pool: list[str]
    pool_embeddings: Tensor
    mean_effects: Tensor
    contributions: Optional[Tensor] = None
    indices: list[int] = field(default_factory=list)
    thumbnails: dict[int, bytes] = field(default_factory=dict)


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


def image_png(image: Tensor) -> bytes:
    """PNG bytes of a [3, H, W] image in [0, 1]."""
    buffer = io.BytesIO()
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


_EXTRA_CSS = """<style>
.examples { display: flex; flex-wrap: wrap; gap: 0.8em; }
.examples figure { margin: 0; font-size: 0.85em; }
.examples img { width: 260px; height: 128px; image-rendering: pixelated; border: 1px solid #ccc; }
.unitnav { display: flex; gap: 1.5em; margin: 0.5em 0 1em 0; }
.grid td a { text-decoration: none; }
#search-results li { margin: 0.2em 0; }
.strip img { width: 64px; height: 64px; image-rendering: pixelated; margin: 2px; border: 1px solid #ccc; }
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


def _figures(name: str, suffix: str, examples: list[tuple[int, float]], images: list[Optional[bytes]]) -> str:
    figures = []
    for rank, ((index, score), png) in enumerate(zip(examples, images)):
        caption = f"#{rank + 1}: image {index}, score {score:.3f}"
        if png is None:
            figures.append(f"<figure><figcaption>{escape(caption)}</figcaption></figure>")
        else:
            src = f"../img/{name}{suffix}_{rank}.png"
            figures.append(f"<figure><img loading='lazy' src='{src}' alt='{escape(caption)}'>"
                           f"<figcaption>{escape(caption)}</figcaption></figure>")
    return "<div class='examples'>" + "".join(figures) + "</div>"


def _head_page(data: SiteData, u: int) -> str:
    view = data.units[u]
    previous = head_page_name(data.units[u - 1].layer, data.units[u - 1].head) if u > 0 else None
    following = head_page_name(data.units[u + 1].layer, data.units[u + 1].head) if u + 1 < len(data.units) else None
    examples = RawHTML(
        "<p>Images with the highest score along the head's first principal direction (its contribution to the "
        "image embedding · that direction); left: the image, right: the head's map of that direction "
        "(<code>joint_map</code>, min-max normalised).</p>" + _figures(view.name, "", view.examples, view.images))
    bottom = RawHTML("<p>Images with the lowest score along the same direction, lowest first.</p>"
                     + _figures(view.name, "_bottom", view.bottom, view.bottom_images))
    sections = [
        ("Head", RawHTML(_EXTRA_CSS + _nav(previous, "../index.html", following)
                         + f"<p>Layer {view.layer}, head {view.head}: share of the embedding "
                           f"{100 * view.share:.2f}% (mean of ĉ·y/‖y‖² over {data.n_images} images). "
                           "Keys: ← previous head, → next head.</p>"
                         + _keys_script(previous, following))),
        ("Top examples", examples),
        *([("Bottom examples", bottom)] if view.bottom else []),
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
  function dot(a, b) { var s = 0; for (var i = 0; i < a.length; i++) s += a[i] * b[i]; return s; }
  function matches(q) {
    var ws = words(q), rows = [];
    data.texts.forEach(function (t, i) { if (t.toLowerCase() === q) rows.push(i); });
    if (!rows.length) data.texts.forEach(function (t, i) {
      var low = t.toLowerCase();
      if (ws.every(function (w) { return hasWord(low, w); })) rows.push(i);
    });
    return rows;
  }
  function search() {
    var q = box.value.trim().toLowerCase();
    out.innerHTML = '';
    if (!words(q).length) { note.textContent = ''; return; }
    var rows = matches(q);
    note.textContent = rows.length ? rows.length + ' pool text(s) match' : 'no pool text matches: try a word of the pool';
    if (!rows.length) return;
    var d = data.emb[0].length, qv = new Array(d).fill(0);
    rows.forEach(function (r) { for (var j = 0; j < d; j++) qv[j] += data.emb[r][j]; });
    var norm = Math.sqrt(dot(qv, qv)) || 1;
    qv = qv.map(function (x) { return x / norm; });
    var scores = data.means.map(function (m) { return dot(m, qv); });
    var order = data.units.map(function (_, u) { return u; });
    order.sort(function (a, b) { return scores[b] - scores[a] || a - b; });
    order.slice(0, 10).forEach(function (u, rank) {
      var li = document.createElement('li'), a = document.createElement('a');
      a.href = 'heads/' + data.units[u] + '.html'; a.textContent = data.units[u];
      li.appendChild(a); li.appendChild(document.createTextNode(' cosine ' + scores[u].toFixed(3)));
      if (data.contrib && rank < 3) {
        var best = data.indices.map(function (idx, i) { return [dot(data.contrib[i][u], qv), idx]; });
        best.sort(function (x, y) { return y[0] - x[0] || x[1] - y[1]; });
        var strip = document.createElement('div'); strip.className = 'strip';
        best.slice(0, data.k).forEach(function (p) {
          var img = document.createElement('img');
          img.loading = 'lazy'; img.src = 'img/image_' + p[1] + '.png';
          img.title = 'image ' + p[1] + ', score ' + p[0].toFixed(3); img.alt = img.title;
          strip.appendChild(img);
        });
        li.appendChild(strip);
      }
      out.appendChild(li);
    });
  }
  box.addEventListener('input', search);
  var initial = new URLSearchParams(window.location.search).get('q');
  if (initial) { box.value = initial; search(); }
})();
</script>"""


def _rows_matching(pool: list[str], query: str) -> list[int]:
    """Pool texts equal to the query (case-insensitive), else those containing every word of it."""
    q = query.lower().strip()
    rows = [i for i, t in enumerate(pool) if t.lower() == q]
    if not rows:
        rows = [i for i, t in enumerate(pool) if all(re.search(rf"\b{re.escape(w)}\b", t.lower()) for w in q.split())]
    return rows


def query_direction(data: SiteData, query: str) -> Optional[Tensor]:
    """The site's offline query embedding: the normalised mean of the matching pool texts' embeddings."""
    rows = _rows_matching(data.pool, query) if query.split() else []
    return F.normalize(data.pool_embeddings[rows].float().mean(0), dim=0) if rows else None


def rank_units(data: SiteData, query: str) -> list[tuple[str, float]]:
    """What the search box lists, in Python: heads by cosine of the query with their mean direct effect."""
    q = query_direction(data, query)
    if q is None:
        return []
    scores = data.mean_effects.float() @ q
    order = sorted(range(len(data.units)), key=lambda u: (-float(scores[u]), u))
    return [(data.units[u].name, float(scores[u])) for u in order]


def query_examples(data: SiteData, name: str, query: str, k: int = 8) -> list[tuple[int, float]]:
    """A found head's top images along the query (what the search shows under it): (dataset index, score),
    higher score first, lower index on ties."""
    q = query_direction(data, query)
    if q is None or data.contributions is None:
        return []
    u = [v.name for v in data.units].index(name)
    scores = (data.contributions[:, u].float() @ q).tolist()
    return sorted(zip(data.indices, scores), key=lambda p: (-p[1], p[0]))[:k]


def _rounded(t: Tensor, digits: int) -> list:
    return np.round(t.double().numpy(), digits).tolist()  # float64: short decimal reprs in the JSON


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
    payload = {"texts": data.pool, "units": [v.name for v in data.units], "k": SEARCH_EXAMPLES,
               "emb": _rounded(data.pool_embeddings, 4), "means": _rounded(data.mean_effects, 5),
               "contrib": None if data.contributions is None else _rounded(data.contributions, 4),
               "indices": list(data.indices)}
    blob = json.dumps(payload, separators=(",", ":")).replace("</", "<\\/")
    search = RawHTML(
        "<p>Type a word or a text of the pool (e.g. <code>red</code>, <code>a blue star</code>): the query is the "
        "mean embedding of the matching pool texts; heads are ranked by its cosine with each head's mean direct "
        "effect, and under the first three are their top images along the query.</p>"
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
    for index, png in data.thumbnails.items():
        (out / "img" / f"image_{index}.png").write_bytes(png)
    for u, view in enumerate(data.units):
        for suffix, images in (("", view.images), ("_bottom", view.bottom_images)):
            for rank, png in enumerate(images):
                if png is not None:
                    (out / "img" / f"{view.name}{suffix}_{rank}.png").write_bytes(png)
        (out / "heads" / head_page_name(view.layer, view.head)).write_text(_head_page(data, u), encoding="utf-8")
    (out / "index.html").write_text(_overview(data), encoding="utf-8")
    return out
