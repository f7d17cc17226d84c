"""The explorer site's pages (``vit-lens-clip explore``).

Layout (every address is stable: a unit's page is named after the unit):

    index.html                 search box and the list of every unit (filter by kind or text, 100 a page);
                               small whatever the number of units: the lists come from units.js, the search's
                               numbers from search.js, loaded when the search is first used
    heads.html                 layers × heads with their shares (as the cells' colour) and first TextSpan description
    heads/L{l}H{h}.html        one page per unit kind folder: heads/, neurons/ (L{l}N{n}), features/ (F{j}),
    neurons/…, features/…,     units/ (user-defined hook units): examples with their maps, descriptions,
    units/…                    direct effect, nearest texts, related units; keys ← → (previous/next unit of
                               the kind), u (the index), 1–9 (the image page of that example)
    images/{i}.html            a dataset image and every unit that keeps it among its examples (← → images)
    img/image_{i}.png          the images, loaded lazily; maps are inline PNGs of the patch grid, drawn over
                               the image by the browser (bilinear), so an image file serves every unit
    units.js, search.js, live.js

Every page is written by the one HTML writer (``viz.html.figures_to_html``), without plotly.js (4.7 MB: a
page must load in well under a second).
Nothing is loaded from a URL: the site works from ``file://``. With ``live.js`` replaced by the live server
(``app.explore_serve``), the search embeds any text and unit pages take a dropped image.
"""

from __future__ import annotations

import base64
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from vit_lens_clip.viz.html import RawHTML, escape, figures_to_html, html_table

__all__ = ["KIND_FOLDERS", "SiteData", "UnitView", "image_png", "map_png", "overlay_png", "query_direction",
           "query_examples", "rank_units", "unit_examples", "write_site"]

KIND_FOLDERS = {"head": "heads", "neuron": "neurons", "feature": "features", "unit": "units"}
SEARCH_EXAMPLES = 8  # images shown under each of the first three units a search finds
THUMB = 128  # displayed pixels of an example image
PAGE_SIZE = 100  # units per page of the index's list


@dataclass
class UnitView:
    """What a unit's page shows: a summary line; descriptions (text, score) under ``description_label``; the
    nearest pool texts of its direct effect (text, cosine); top examples (dataset index, score) with their maps
    (PNG of the patch grid, None where the images could not be re-read), and likewise the bottom examples
    (lowest first) when kept; related units (name, why); the norm of its direct effect; a head's share."""

    name: str
    kind: str
    summary: str
    descriptions: list[tuple[str, float]]
    nearest: list[tuple[str, float]]
    examples: list[tuple[int, float]]
    maps: list[Optional[bytes]] = field(default_factory=list)
    bottom: list[tuple[int, float]] = field(default_factory=list)
    bottom_maps: list[Optional[bytes]] = field(default_factory=list)
    related: list[tuple[str, str]] = field(default_factory=list)
    description_label: str = "description (score)"
    effect_norm: Optional[float] = None
    share: Optional[float] = None

    @property
    def page(self) -> str:
        """The page's address relative to the site's root."""
        return f"{KIND_FOLDERS[self.kind]}/{self.name}.html"


@dataclass
class SiteData:
    """The whole site: the units (heads first, in layer-major order, then the collected units) and what the
    search needs: the pool's unit text embeddings [n_texts, D], the unit direct effects [n_searchable, D] of the
    units ``searchable`` (indices into ``units``) and, for small folders, every image's head contributions
    [n, n_heads, D] (rows of dataset ``indices``), from which the search shows a found head's top images along
    the query. ``pictures``: PNG of every dataset image a page shows, by index."""

    title: str
    n_images: int
    layers: list[int]
    n_heads: int
    units: list[UnitView]
    pool: list[str]
    pool_embeddings: Tensor
    effects: Tensor
    searchable: list[int]
    contributions: Optional[Tensor] = None
    indices: list[int] = field(default_factory=list)
    pictures: dict[int, bytes] = field(default_factory=dict)


def _colormap(x: np.ndarray) -> np.ndarray:
    """A blue → yellow → red ramp for values in [0, 1]: [..., 3] uint8."""
    r = np.clip(2 * x, 0, 1)
    g = np.clip(2 - 2 * np.abs(2 * x - 1) - 0.6 * x, 0, 1)
    b = np.clip(1 - 2 * x, 0, 1)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def map_png(patch_map: Tensor) -> Optional[bytes]:
    """PNG bytes of a [grid_h, grid_w] map, min-max normalised through the colour ramp (one pixel per patch;
    the page scales it over the image); None for a flat map (nothing to show)."""
    m = patch_map.float().numpy()
    if not float(m.max() - m.min()) > 0:
        return None
    m = (m - m.min()) / float(m.max() - m.min())
    buffer = io.BytesIO()
    Image.fromarray(_colormap(m)).save(buffer, format="PNG")
    return buffer.getvalue()


def overlay_png(image: Tensor, patch_map: Tensor, size: int = 256) -> bytes:
    """PNG bytes of [image | image with the min-max normalised map blended over it], each ``size`` px.
    image: [3, H, W] in [0, 1]; patch_map: [grid_h, grid_w], upsampled bilinearly to the image."""
    h, w = image.shape[-2:]
    up = F.interpolate(patch_map[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    up = (up - up.min()) / (up.max() - up.min()).clamp_min(1e-12)
    rgb = (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    blend = (0.45 * rgb + 0.55 * _colormap(up.numpy())).astype(np.uint8)
    canvas = Image.new("RGB", (2 * size + 4, size), "white")
    for x, a in ((0, rgb), (size + 4, blend)):
        canvas.paste(Image.fromarray(a).resize((size, size), Image.NEAREST), (x, 0))
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
.pair { display: flex; gap: 4px; }
.ex { position: relative; width: 128px; height: 128px; border: 1px solid #ccc; }
.ex img { width: 128px; height: 128px; image-rendering: pixelated; display: block; }
.ex img.map { position: absolute; left: 0; top: 0; opacity: 0.55; image-rendering: auto; }
.unitnav { display: flex; gap: 1.5em; margin: 0.5em 0 1em 0; }
.grid td a { text-decoration: none; }
#search-results li { margin: 0.2em 0; }
.strip img { width: 64px; height: 64px; image-rendering: pixelated; margin: 2px; border: 1px solid #ccc; }
.big { width: 256px; height: 256px; image-rendering: pixelated; border: 1px solid #ccc; }
#drop { border: 2px dashed #aaa; padding: 1em; margin: 0.5em 0; }
</style>"""


def _keys_script(previous: Optional[str], following: Optional[str], index: Optional[str] = None) -> str:
    """← / → the previous / next page, u the index, 1–9 the n-th example's link (ignored while typing)."""
    return ("<script>document.addEventListener('keydown', function (e) {"
            "if (e.target && (e.target.tagName === 'INPUT' || e.target.tagName === 'TEXTAREA')) return;"
            f"var prev = {json.dumps(previous)}, next = {json.dumps(following)}, up = {json.dumps(index)};"
            "if (e.key === 'ArrowLeft' && prev) window.location.href = prev;"
            "if (e.key === 'ArrowRight' && next) window.location.href = next;"
            "if (e.key === 'u' && up) window.location.href = up;"
            "if (/^[1-9]$/.test(e.key)) { var a = document.querySelectorAll('a.example')[+e.key - 1];"
            " if (a) window.location.href = a.getAttribute('href'); }"
            "});</script>")


def _nav(previous: Optional[str], index: str, following: Optional[str]) -> str:
    parts = [f"<a id='prev' href='{escape(previous)}'>&larr; previous</a>" if previous else "<span></span>",
             f"<a id='overview' href='{escape(index)}'>index</a>",
             f"<a id='next' href='{escape(following)}'>next &rarr;</a>" if following else "<span></span>"]
    return "<div class='unitnav'>" + "".join(parts) + "</div>"


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _figures(examples: list[tuple[int, float]], maps: list[Optional[bytes]], pictures: dict[int, bytes]) -> str:
    """One figure per example: the image, and the image with the unit's map over it; each links to the
    image's page."""
    figures = []
    for rank, ((index, score), png) in enumerate(zip(examples, maps)):
        caption = f"#{rank + 1}: image {index}, score {score:.3f}"
        if index not in pictures:
            figures.append(f"<figure><figcaption>{escape(caption)}</figcaption></figure>")
            continue
        src = f"../img/image_{index}.png"
        caption += "" if png is not None else " (flat map: nothing to show per patch)"
        overlay = f"<img class='map' src='{_data_uri(png)}' alt='map'>" if png is not None else ""
        figures.append(f"<figure><a class='example' href='../images/{index}.html'><div class='pair'>"
                       f"<div class='ex'><img loading='lazy' src='{src}' alt='{escape(caption)}'></div>"
                       f"<div class='ex'><img loading='lazy' src='{src}' alt=''>{overlay}</div></div></a>"
                       f"<figcaption>{escape(caption)}</figcaption></figure>")
    return "<div class='examples'>" + "".join(figures) + "</div>"


_DROP_SCRIPT = """<script>
(function () {
  if (!window.EXPLORER_LIVE) return;
  var box = document.getElementById('drop'); box.style.display = 'block';
  function send(file) {
    fetch('/api/map?unit=' + encodeURIComponent(box.dataset.unit), {method: 'POST', body: file})
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.blob(); })
      .then(function (b) { var img = document.getElementById('drop-result'); img.src = URL.createObjectURL(b);
                           img.style.display = 'block'; })
      .catch(function (e) { box.querySelector('span').textContent = 'map failed: ' + e.message; });
  }
  box.addEventListener('dragover', function (e) { e.preventDefault(); });
  box.addEventListener('drop', function (e) {
    e.preventDefault(); if (e.dataTransfer.files.length) send(e.dataTransfer.files[0]);
  });
  box.querySelector('input').addEventListener('change', function (e) { if (e.target.files.length) send(e.target.files[0]); });
})();
</script>"""


def _unit_page(data: SiteData, u: int, previous: Optional[str], following: Optional[str],
               pages: dict[str, str]) -> str:
    view = data.units[u]
    examples = RawHTML(
        "<p>Left: the image; right: the unit's map over it (per patch, min-max normalised; blue low, red high). "
        "Click an example (or press 1–9) for every unit that keeps that image.</p>"
        + _figures(view.examples, view.maps, data.pictures))
    bottom = RawHTML("<p>Images with the lowest score, lowest first.</p>"
                     + _figures(view.bottom, view.bottom_maps, data.pictures))
    scale = {"head": "the mean of its parts of y/‖y‖ over the images",
             "neuron": "its second-order effect in the space of 100·y/‖y‖, averaged over its examples",
             "feature": "per unit of pooled activation, the final LayerNorm's σ set to 1",
             "unit": "per unit along its direction, the final LayerNorm's σ set to 1"}[view.kind]
    effect = (f"<p>‖direct effect‖ = {view.effect_norm:.4g} ({scale}); the search ranks units by its cosine "
              "with the query.</p>" if view.effect_norm is not None else "<p>No direct effect is known for this unit.</p>")
    related = [[RawHTML(f"<a class='related' href='../{escape(pages[name])}'>{escape(name)}</a>"), why]
               for name, why in view.related if name in pages]
    drop = (f"<div id='drop' data-unit='{escape(view.name)}' style='display:none'><span>Live mode: drop an image "
            "here (or choose one) to see this unit's map on it.</span> <input type='file' accept='image/*'>"
            "<img id='drop-result' class='big' style='display:none' alt='map of the dropped image'></div>"
            "<script src='../live.js'></script>" + _DROP_SCRIPT)
    sections = [
        (view.name, RawHTML(_EXTRA_CSS + _nav(previous, "../index.html", following)
                            + f"<p>{escape(view.summary)}</p><p><small>Keys: ← previous, → next {view.kind}, "
                              "u index, 1–9 an example.</small></p>"
                            + _keys_script(previous, following, "../index.html") + drop)),
        ("Top examples", examples),
        *([("Bottom examples", bottom)] if view.bottom else []),
        *([("Descriptions", RawHTML(html_table(["text", view.description_label],
                                               [[t, f"{v:.3f}"] for t, v in view.descriptions]))
            if view.descriptions else RawHTML("<p>No descriptions.</p>"))] if view.descriptions != view.nearest else []),
        ("Direct effect on the embedding and its nearest texts",
         RawHTML(effect + (html_table(["text", "cosine"], [[t, f"{c:.3f}"] for t, c in view.nearest])
                           if view.nearest else ""))),
        *([("Related units", RawHTML(html_table(["unit", "why"], related)))] if related else []),
    ]
    return figures_to_html(sections, title=f"{view.name} · {data.title}", table_of_contents=False)


def _image_page(data: SiteData, index: int, keepers: list[tuple[UnitView, int, float]],
                previous: Optional[str], following: Optional[str]) -> str:
    rows = [[RawHTML(f"<a class='unit' href='../{escape(v.page)}'>{escape(v.name)}</a>"), v.kind, rank + 1,
             f"{score:.3f}"] for v, rank, score in keepers]
    body = (_EXTRA_CSS + _nav(previous, "../index.html", following) + _keys_script(previous, following, "../index.html")
            + f"<img class='big' src='../img/image_{index}.png' alt='image {index}'>"
            + f"<p>{len(keepers)} unit(s) keep this image among their examples.</p>")
    return figures_to_html([(f"Image {index}", RawHTML(body)),
                            ("Units", html_table(["unit", "kind", "rank", "score"], rows))],
                           title=f"image {index} · {data.title}", table_of_contents=False)


_SEARCH_SCRIPT = """<script>
(function () {
  var box = document.getElementById('search'), out = document.getElementById('search-results');
  var note = document.getElementById('search-note'), data = null;
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
  function strip(indices, scores) {
    var div = document.createElement('div'); div.className = 'strip';
    indices.forEach(function (idx, i) {
      var a = document.createElement('a'); a.href = 'images/' + idx + '.html';
      var img = document.createElement('img'); img.loading = 'lazy'; img.src = 'img/image_' + idx + '.png';
      img.title = 'image ' + idx + (scores ? ', score ' + scores[i].toFixed(3) : ''); img.alt = img.title;
      a.appendChild(img); div.appendChild(a);
    });
    return div;
  }
  function show(found, qv) {
    out.innerHTML = '';
    found.slice(0, 10).forEach(function (f, rank) {
      var li = document.createElement('li'), a = document.createElement('a');
      a.href = f.page; a.textContent = f.name;
      li.appendChild(a); li.appendChild(document.createTextNode(' (' + f.kind + ') cosine ' + f.cosine.toFixed(3)));
      if (rank < 3) {
        var h = data && qv && data.contrib ? data.heads.indexOf(f.name) : -1;
        if (h >= 0) {
          var best = data.indices.map(function (idx, i) { return [dot(data.contrib[i][h], qv), idx]; });
          best.sort(function (x, y) { return y[0] - x[0] || x[1] - y[1]; });
          best = best.slice(0, data.k);
          li.appendChild(strip(best.map(function (p) { return p[1]; }), best.map(function (p) { return p[0]; })));
        } else if (f.examples && f.examples.length) li.appendChild(strip(f.examples.slice(0, 8)));
      }
      out.appendChild(li);
    });
  }
  function offline(q) {
    var rows = matches(q);
    note.textContent = rows.length ? rows.length + ' pool text(s) match' : 'no pool text matches: try a word of the pool';
    if (!rows.length) { out.innerHTML = ''; return; }
    var d = data.emb[0].length, qv = new Array(d).fill(0);
    rows.forEach(function (r) { for (var j = 0; j < d; j++) qv[j] += data.emb[r][j]; });
    var norm = Math.sqrt(dot(qv, qv)) || 1;
    qv = qv.map(function (x) { return x / norm; });
    var scores = data.effects.map(function (m) { return dot(m, qv); });
    var order = scores.map(function (_, u) { return u; });
    order.sort(function (a, b) { return scores[b] - scores[a] || a - b; });
    show(order.slice(0, 10).map(function (u) {
      var unit = data.units[u];
      return {name: unit[0], kind: unit[1], page: unit[2], cosine: scores[u], examples: unit[3]};
    }), qv);
  }
  function live(q) {
    fetch('/api/search?q=' + encodeURIComponent(q)).then(function (r) { return r.json(); }).then(function (found) {
      if (box.value.trim().toLowerCase() !== q) return;
      note.textContent = 'live: the text embedded by the model';
      show(found, null);
    });
  }
  function search() {
    var q = box.value.trim().toLowerCase();
    if (!words(q).length) { note.textContent = ''; out.innerHTML = ''; return; }
    if (window.EXPLORER_LIVE) return live(q);
    if (data) return offline(q);
    note.textContent = 'loading the search data...';
    var s = document.createElement('script'); s.src = 'search.js';
    s.onload = function () { data = window.EXPLORER_SEARCH; search(); };
    document.head.appendChild(s);
  }
  box.addEventListener('input', search);
  var initial = new URLSearchParams(window.location.search).get('q');
  if (initial) { box.value = initial; search(); }
})();
</script>"""

_LIST_SCRIPT = """<script>
(function () {
  var all = window.EXPLORER_UNITS, kind = document.getElementById('kind'), filter = document.getElementById('filter');
  var list = document.getElementById('unit-list'), pager = document.getElementById('pager'), page = 0, SIZE = %d;
  function shown() {
    var f = filter.value.trim().toLowerCase();
    return all.filter(function (u) {
      return (!kind.value || u[1] === kind.value) && (!f || u[0].toLowerCase().indexOf(f) >= 0 ||
                                                     u[4].toLowerCase().indexOf(f) >= 0);
    });
  }
  function render() {
    var rows = shown(), pages = Math.max(1, Math.ceil(rows.length / SIZE));
    page = Math.min(page, pages - 1);
    list.innerHTML = '';
    rows.slice(page * SIZE, (page + 1) * SIZE).forEach(function (u) {
      var li = document.createElement('li'), a = document.createElement('a');
      a.href = u[2]; a.textContent = u[0]; li.appendChild(a);
      li.appendChild(document.createTextNode(' ' + u[1] + (u[4] ? ' · ' + u[4] : '')));
      list.appendChild(li);
    });
    pager.textContent = rows.length + ' units, page ' + (page + 1) + ' of ' + pages + ' ';
    [['previous', -1], ['next', 1]].forEach(function (p) {
      var b = document.createElement('button'); b.textContent = p[0]; b.id = 'page-' + p[0];
      b.disabled = page + p[1] < 0 || page + p[1] >= pages;
      b.onclick = function () { page += p[1]; render(); }; pager.appendChild(b);
    });
  }
  kind.addEventListener('change', function () { page = 0; render(); });
  filter.addEventListener('input', function () { page = 0; render(); });
  render();
})();
</script>""" % PAGE_SIZE


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


def rank_units(data: SiteData, query: str | Tensor) -> list[tuple[str, float]]:
    """What the search lists, in Python: units by cosine of the query (a text of the pool's words, or an
    embedding: the live mode's) with their direct effect, higher first, earlier unit on ties."""
    q = query_direction(data, query) if isinstance(query, str) else F.normalize(query.float(), dim=0)
    if q is None or not data.searchable:
        return []
    scores = (data.effects.double() * q.double()).sum(-1).tolist()  # row by row: equal rows tie exactly
    order = sorted(range(len(data.searchable)), key=lambda r: (-scores[r], r))
    return [(data.units[data.searchable[r]].name, scores[r]) for r in order]


def query_examples(data: SiteData, name: str, query: str, k: int = 8) -> list[tuple[int, float]]:
    """A found head's top images along the query (what the search shows under it): (dataset index, score),
    higher score first, lower index on ties."""
    q = query_direction(data, query)
    heads = [v.name for v in data.units if v.kind == "head"]
    if q is None or data.contributions is None or name not in heads:
        return []
    scores = (data.contributions[:, heads.index(name)].float() @ q).tolist()
    return sorted(zip(data.indices, scores), key=lambda p: (-p[1], p[0]))[:k]


def unit_examples(data: SiteData, name: str, query: str = "", k: int = 8) -> list[tuple[int, float]]:
    """The images the search shows under a found unit: a head's top images along the query (small folders), any
    other unit's own top examples."""
    along = query_examples(data, name, query, k) if query else []
    return along or next(v.examples[:k] for v in data.units if v.name == name)


def _rounded(t: Tensor, digits: int) -> list:
    return np.round(t.double().numpy(), digits).tolist()  # float64: short decimal reprs in the JSON


def _script(variable: str, value: object) -> str:
    return f"window.{variable} = " + json.dumps(value, separators=(",", ":")) + ";\n"


def _heads_page(data: SiteData) -> str:
    """Layers × heads: each cell the head's link, its share of the embedding (the cell's colour, white → blue
    by |share| against the largest) and its first TextSpan description. No plotly.js: the page stays light."""
    by_key = {v.name: v for v in data.units if v.kind == "head"}
    largest = max((abs(v.share or 0) for v in by_key.values()), default=0) or 1
    rows = []
    for layer in data.layers:
        cells = [f"<th>layer {layer}</th>"]
        for h in range(data.n_heads):
            v = by_key[f"L{layer}H{h}"]
            first = escape(v.descriptions[0][0]) if v.descriptions else ""
            alpha = abs(v.share or 0) / largest
            cells.append(f"<td style='background: rgba(74, 123, 208, {0.6 * alpha:.2f})'><a href='{v.page}'>{v.name}</a> "
                         f"{100 * (v.share or 0):.1f}%<br><small>{first}</small></td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "<tr><th></th>" + "".join(f"<th>head {h}</th>" for h in range(data.n_heads)) + "</tr>"
    grid = RawHTML(_EXTRA_CSS + "<p><a href='index.html'>index</a>. Each cell: the head's page, its share of the "
                   f"embedding (mean of ĉ·y/‖y‖² over {data.n_images} images; the colour: its size), its first "
                   "TextSpan description.</p><table class='grid'>" + header + "".join(rows) + "</table>")
    return figures_to_html([("Heads", grid)], title=f"Heads · {data.title}")


def _index(data: SiteData) -> str:
    kinds = [k for k in KIND_FOLDERS if any(v.kind == k for v in data.units)]
    counts = ", ".join(f"{sum(v.kind == k for v in data.units)} {KIND_FOLDERS[k]}" for k in kinds)
    options = "<option value=''>all kinds</option>" + "".join(f"<option value='{k}'>{KIND_FOLDERS[k]}</option>"
                                                              for k in kinds)
    search = RawHTML(
        _EXTRA_CSS + "<script src='live.js'></script>"
        "<p>Type a word or a text of the pool (e.g. <code>red</code>, <code>a blue star</code>): the query is the "
        "mean embedding of the matching pool texts (in the live mode, any text, embedded by the model); units are "
        "ranked by its cosine with their direct effect on the embedding; under the first three are their images "
        "(a head's top images along the query, another unit's own top examples).</p>"
        "<input id='search' type='search' placeholder='search units by text' size='40' autocomplete='off'> "
        "<span id='search-note'></span><ol id='search-results'></ol>" + _SEARCH_SCRIPT)
    units = RawHTML(
        f"<p>{counts}; {data.n_images} images. <a href='heads.html'>Heads by layer</a> (shares, TextSpan).</p>"
        f"<select id='kind'>{options}</select> <input id='filter' type='search' placeholder='filter by name or "
        "description' size='30'> <span id='pager'></span><ul id='unit-list'></ul>"
        "<script src='units.js'></script>" + _LIST_SCRIPT
        + _keys_script(None, data.units[0].page if data.units else None))
    return figures_to_html([("Search", search), ("Units", units)], title=f"Explorer · {data.title}")


def write_site(data: SiteData, out: str | Path) -> Path:
    """Write the site (module docstring) under ``out``; returns ``out``."""
    out = Path(out)
    for folder in ["img", "images", *KIND_FOLDERS.values()]:
        (out / folder).mkdir(parents=True, exist_ok=True)
    for index, png in data.pictures.items():
        (out / "img" / f"image_{index}.png").write_bytes(png)
    pages = {v.name: v.page for v in data.units}
    by_kind: dict[str, list[int]] = {}
    for u, view in enumerate(data.units):
        by_kind.setdefault(view.kind, []).append(u)
    for members in by_kind.values():
        for j, u in enumerate(members):
            previous = f"../{data.units[members[j - 1]].page}" if j > 0 else None
            following = f"../{data.units[members[j + 1]].page}" if j + 1 < len(members) else None
            (out / data.units[u].page).write_text(_unit_page(data, u, previous, following, pages), encoding="utf-8")
    keepers: dict[int, list[tuple[UnitView, int, float]]] = {}
    for view in data.units:
        for rank, (index, score) in enumerate(view.examples):
            keepers.setdefault(index, []).append((view, rank, score))
    shown = sorted(i for i in keepers if i in data.pictures)
    for j, index in enumerate(shown):
        previous = f"{shown[j - 1]}.html" if j > 0 else None
        following = f"{shown[j + 1]}.html" if j + 1 < len(shown) else None
        (out / "images" / f"{index}.html").write_text(_image_page(data, index, keepers[index], previous, following),
                                                      encoding="utf-8")
    label = {v.name: (v.descriptions[0][0] if v.descriptions else "") for v in data.units}
    (out / "units.js").write_text(_script("EXPLORER_UNITS", [[v.name, v.kind, v.page, None, label[v.name]]
                                                             for v in data.units]), encoding="utf-8")
    heads = [v.name for v in data.units if v.kind == "head"]
    search = {"texts": data.pool, "emb": _rounded(data.pool_embeddings, 4), "effects": _rounded(data.effects, 4),
              "units": [[data.units[u].name, data.units[u].kind, data.units[u].page,
                         [i for i, _ in data.units[u].examples[:SEARCH_EXAMPLES]]] for u in data.searchable],
              "heads": heads, "k": SEARCH_EXAMPLES, "indices": list(data.indices),
              "contrib": None if data.contributions is None else _rounded(data.contributions, 4)}
    (out / "search.js").write_text(_script("EXPLORER_SEARCH", search), encoding="utf-8")
    (out / "live.js").write_text("window.EXPLORER_LIVE = false;\n", encoding="utf-8")
    (out / "heads.html").write_text(_heads_page(data), encoding="utf-8")
    (out / "index.html").write_text(_index(data), encoding="utf-8")
    return out
