"""The explorer's pages: stable head addresses, prev/next links and keys, lazy images, and the offline search."""

from __future__ import annotations

import io
import json
import re

import torch
import torch.nn.functional as F
from PIL import Image

from vit_lens_clip.viz.explorer import (
    HeadView,
    SiteData,
    image_png,
    overlay_png,
    query_examples,
    rank_units,
    write_site,
)


def _data(with_contributions: bool = True) -> SiteData:
    torch.manual_seed(0)
    d = 8
    pool = ["a red star", "a blue star", "a red circle", "snow"]
    emb = F.normalize(torch.randn(4, d), dim=-1)
    means = torch.stack([emb[1], emb[0] + emb[2], emb[3], -emb[0]])  # head 1 (L0H1) points at "red"
    png = overlay_png(torch.rand(3, 16, 16), torch.randn(2, 2))
    units = [HeadView(layer=0 + u // 2, head=u % 2, share=0.1 * u, descriptions=[("a red star", 0.4)] if u else [],
                      nearest=[("snow", 0.2)], examples=[(3, 1.5), (1, 0.5)], images=[png, None],
                      bottom=[(2, -1.0)] if u == 1 else [], bottom_images=[png] if u == 1 else []) for u in range(4)]
    contributions = torch.randn(5, 4, d)
    contributions[4, 1] = 5 * (emb[0] + emb[2])  # image 4 is the reddest for L0H1
    return SiteData(title="t <b>", n_images=5, layers=[0, 1], n_heads=2, units=units, pool=pool,
                    pool_embeddings=emb, mean_effects=F.normalize(means, dim=-1),
                    contributions=contributions if with_contributions else None, indices=[0, 1, 2, 3, 4],
                    thumbnails={i: image_png(torch.rand(3, 8, 8)) for i in range(5)} if with_contributions else {})


def test_search_ranks_heads_by_the_mean_of_the_matching_pool_texts():
    data = _data()
    assert rank_units(data, "red")[0][0] == "L0H1"  # "a red star" and "a red circle": their mean is L0H1's mean
    assert rank_units(data, "A Blue Star")[0][0] == "L0H0"  # an exact (case-insensitive) match
    assert rank_units(data, "starfish") == [] and rank_units(data, "  ") == []
    assert query_examples(data, "L0H1", "red", k=2)[0][0] == 4
    assert query_examples(_data(False), "L0H1", "red") == []


def test_overlay_is_two_panels_side_by_side():
    image = Image.open(io.BytesIO(overlay_png(torch.rand(3, 16, 16), torch.randn(2, 2))))
    assert image.size == (2 * 128 + 4, 128)


def test_site_has_a_page_per_head_with_links_keys_and_lazy_images(tmp_path):
    data = _data()
    out = write_site(data, tmp_path / "site")
    names = ["L0H0", "L0H1", "L1H0", "L1H1"]
    assert sorted(p.name for p in (out / "heads").iterdir()) == [f"{n}.html" for n in names]
    index = (out / "index.html").read_text()
    assert all(f"href='heads/{n}.html'" in index for n in names) and "t &lt;b&gt;" in index
    payload = json.loads(re.search(r"id='search-data'>(.*?)</script>", index, re.S).group(1))
    assert payload["units"] == names and len(payload["emb"]) == 4 and len(payload["contrib"]) == 5
    page = (out / "heads" / "L0H1.html").read_text()
    assert "href='L0H0.html'" in page and "href='L1H0.html'" in page and "href='../index.html'" in page
    assert "ArrowLeft" in page and "ArrowRight" in page
    assert "<img loading='lazy' src='../img/L0H1_0.png'" in page and (out / "img" / "L0H1_0.png").is_file()
    assert "<img loading='lazy' src='../img/L0H1_bottom_0.png'" in page and (out / "img" / "L0H1_bottom_0.png").is_file()
    assert "Bottom examples" not in (out / "heads" / "L0H0.html").read_text()
    assert "plotly" not in page.lower()  # head pages carry no plotly.js: only the overview's figure needs it
    first, last = (out / "heads" / "L0H0.html").read_text(), (out / "heads" / "L1H1.html").read_text()
    assert "id='prev'" not in first and "id='next'" not in last
    assert (out / "img" / "image_4.png").is_file()
