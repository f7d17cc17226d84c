"""The explorer's pages: stable unit addresses per kind, prev/next links and keys, lazy images with inline maps,
image pages linking back to units, a small index, and the offline search over units of every kind."""

from __future__ import annotations

import io
import json
import re

import torch
import torch.nn.functional as F
from PIL import Image

from vit_lens_clip.viz.explorer import (
    SiteData,
    UnitView,
    image_png,
    map_png,
    overlay_png,
    query_examples,
    rank_units,
    unit_examples,
    write_site,
)


def _data(with_contributions: bool = True, n_features: int = 3) -> SiteData:
    torch.manual_seed(0)
    d = 8
    pool = ["a red star", "a blue star", "a red circle", "snow"]
    emb = F.normalize(torch.randn(4, d), dim=-1)
    png = map_png(torch.randn(2, 2))
    heads = [UnitView(name=f"L{u // 2}H{u % 2}", kind="head", summary="head <i>", share=0.1 * u,
                      descriptions=[("a red star", 0.4)] if u else [], nearest=[("snow", 0.2)],
                      examples=[(3, 1.5), (1, 0.5)], maps=[png, None],
                      bottom=[(2, -1.0)] if u == 1 else [], bottom_maps=[png] if u == 1 else []) for u in range(4)]
    features = [UnitView(name=f"F{j}", kind="feature", summary="feature", descriptions=[("snow", 0.3)],
                         nearest=[("snow", 0.3)], examples=[(j % 5, 2.0)], maps=[png],
                         related=[("L0H1", "similar")]) for j in range(n_features)]
    effects = torch.stack([emb[1], emb[0] + emb[2], emb[3], -emb[0]] + [emb[3]] * n_features)  # L0H1 points at "red"
    contributions = torch.randn(5, 4, d)
    contributions[4, 1] = 5 * (emb[0] + emb[2])  # image 4 is the reddest for L0H1
    return SiteData(title="t <b>", n_images=5, layers=[0, 1], n_heads=2, units=heads + features, pool=pool,
                    pool_embeddings=emb, effects=F.normalize(effects, dim=-1), searchable=list(range(4 + n_features)),
                    contributions=contributions if with_contributions else None, indices=[0, 1, 2, 3, 4],
                    pictures={i: image_png(torch.rand(3, 8, 8)) for i in range(5)})


def test_search_ranks_units_by_the_mean_of_the_matching_pool_texts():
    data = _data()
    assert rank_units(data, "red")[0][0] == "L0H1"  # "a red star" and "a red circle": their mean is L0H1's effect
    assert rank_units(data, "A Blue Star")[0][0] == "L0H0"  # an exact (case-insensitive) match
    assert rank_units(data, "snow")[0][0] == "L1H0" and rank_units(data, "snow")[1][0] == "F0"  # ties: earlier unit
    assert rank_units(data, "starfish") == [] and rank_units(data, "  ") == []
    assert rank_units(data, data.pool_embeddings[3] * 7)[0][0] == "L1H0"  # an embedding (the live mode's)
    assert query_examples(data, "L0H1", "red", k=2)[0][0] == 4
    assert query_examples(_data(False), "L0H1", "red") == []
    assert unit_examples(data, "F2") == [(2, 2.0)] and unit_examples(data, "L0H1", "red", k=1)[0][0] == 4


def test_maps_are_patch_grids_and_the_overlay_two_panels():
    grid = Image.open(io.BytesIO(map_png(torch.arange(6.0).reshape(2, 3))))
    assert grid.size == (3, 2) and grid.getpixel((0, 0))[2] == 255 and grid.getpixel((2, 1))[0] == 255  # blue → red
    assert map_png(torch.zeros(2, 2)) is None  # a flat map shows nothing
    image = Image.open(io.BytesIO(overlay_png(torch.rand(3, 16, 16), torch.randn(2, 2), size=64)))
    assert image.size == (2 * 64 + 4, 64)


def test_site_has_a_page_per_unit_with_links_keys_lazy_images_and_image_pages(tmp_path):
    data = _data()
    out = write_site(data, tmp_path / "site")
    names = ["L0H0", "L0H1", "L1H0", "L1H1"]
    assert sorted(p.name for p in (out / "heads").iterdir()) == [f"{n}.html" for n in names]
    assert sorted(p.name for p in (out / "features").iterdir()) == ["F0.html", "F1.html", "F2.html"]
    units = json.loads((out / "units.js").read_text().split("=", 1)[1].rstrip(";\n"))
    assert [u[2] for u in units] == [f"heads/{n}.html" for n in names] + [f"features/F{j}.html" for j in range(3)]
    search = json.loads((out / "search.js").read_text().split("=", 1)[1].rstrip(";\n"))
    assert [u[0] for u in search["units"]] == names + ["F0", "F1", "F2"] and len(search["contrib"]) == 5
    page = (out / "heads" / "L0H1.html").read_text()
    assert "href='../heads/L0H0.html'" in page and "href='../heads/L1H0.html'" in page and "../index.html" in page
    assert "ArrowLeft" in page and "ArrowRight" in page and "head &lt;i&gt;" in page
    assert "<img loading='lazy' src='../img/image_3.png'" in page and "data:image/png;base64," in page
    assert page.count("class='example' href='../images/") == 3  # two top examples and one bottom example
    assert "Bottom examples" not in (out / "heads" / "L0H0.html").read_text()
    assert "plotly" not in page.lower() and "plotly" not in (out / "index.html").read_text().lower()
    first, last = (out / "heads" / "L0H0.html").read_text(), (out / "heads" / "L1H1.html").read_text()
    assert "id='prev'" not in first and "id='next'" not in last
    feature = (out / "features" / "F1.html").read_text()
    assert "href='../features/F0.html'" in feature and "href='../heads/L0H1.html'" in feature  # kind nav, related
    image = (out / "images" / "3.html").read_text()
    assert all(f"href='../heads/{n}.html'" in image for n in names)  # every unit that keeps image 3 links back
    assert "href='../features/F0.html'" not in image and "href='../features/F0.html'" in (out / "images" / "0.html").read_text()
    assert (out / "img" / "image_4.png").is_file() and "EXPLORER_LIVE = false" in (out / "live.js").read_text()


def test_the_index_stays_small_with_many_units(tmp_path):
    """The index carries no per-unit data: with 300 more units it grows by nothing (but the count's digits),
    units.js by each unit's row."""
    small = write_site(_data(n_features=3), tmp_path / "small")
    big = write_site(_data(n_features=303), tmp_path / "big")
    size = (big / "index.html").stat().st_size
    assert size == (small / "index.html").stat().st_size + len("303") - len("3") and size < 20_000
    units = (big / "units.js").stat().st_size - (small / "units.js").stat().st_size
    assert units < 300 * 80
    assert len(re.findall(r"<script", (big / "index.html").read_text())) <= 8
