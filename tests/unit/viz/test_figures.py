"""vit_lens_clip.viz: figure contents, token order of the attention view, and offline HTML pages."""

import json
import re

import numpy as np
import plotly.offline
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_refused, tiny_clip
from torchvision import transforms

from vit_lens_clip.model.hooked_vit import HookedViT
from vit_lens_clip.viz.attention import (
    attention_pattern_figure,
    attention_patterns_html,
    circuitsvis_bundle_path,
    circuitsvis_script,
    patch_labels,
)
from vit_lens_clip.viz.figures import (
    ablation_curve,
    bar_table,
    heatmap_overlay,
    layer_head_grid,
    overlay_grid,
    segmentation_example_figure,
    to_display_image,
)
from vit_lens_clip.viz.html import RawHTML, escape, figures_to_html, html_table, markdown_to_html, plotly_script
from vit_lens_clip.viz.pages import segmentation_page, textspan_page

needs_circuitsvis = pytest.mark.skipif(circuitsvis_bundle_path() is None, reason="circuitsvis bundle not installed")


def _image(h=40, w=56, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def model():
    return HookedViT.from_open_clip(tiny_clip(0, image_size=(32, 48)))  # 4 x 6 grid of 8-pixel patches


@pytest.fixture(scope="module")
def pattern(model):
    _, cache = model.run_with_cache(torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(0)),
                                    names_filter="blocks.1.attn.hook_pattern")
    return cache["blocks.1.attn.hook_pattern"][0]  # [heads, 25, 25]


def _script_srcs(page: str) -> list[str]:
    return re.findall(r"<script\b[^>]*\bsrc\s*=", page, flags=re.IGNORECASE)


# ----------------------------------------------------------------------------------------------- labels
def test_patch_labels_follow_the_models_token_order(model):
    """Light up one patch per image: the token that changes is the one labelled r{i}c{j}, after CLS."""
    gh, gw = model.cfg.grid_size
    p = model.cfg.patch_size[0] if isinstance(model.cfg.patch_size, (tuple, list)) else model.cfg.patch_size
    labels = patch_labels(gh, gw)
    assert len(labels) == 1 + gh * gw and labels[0] == "CLS"
    images = torch.zeros(gh * gw + 1, 3, gh * p, gw * p)
    cells = [(i, j) for i in range(gh) for j in range(gw)]
    for b, (i, j) in enumerate(cells, start=1):
        images[b, :, i * p:(i + 1) * p, j * p:(j + 1) * p] = 1.0
    _, cache = model.run_with_cache(images, names_filter="hook_tokens")
    delta = (cache["hook_tokens"][1:] - cache["hook_tokens"][:1]).norm(dim=-1)  # [n_cells, pos]
    for b, (i, j) in enumerate(cells):
        changed = torch.nonzero(delta[b] > 1e-6).flatten().tolist()
        assert changed == [labels.index(f"r{i}c{j}")]
    assert patch_labels(2, 3, cls_label=None) == ["r0c0", "r0c1", "r0c2", "r1c0", "r1c1", "r1c2"]


# ---------------------------------------------------------------------------------------------- overlays
def test_overlay_upsamples_a_patch_grid_to_the_image_pixels():
    image = _image(40, 56)
    grid = torch.rand(5, 7, generator=torch.Generator().manual_seed(1))
    fig = heatmap_overlay(image, grid, title="map")
    assert [t.type for t in fig.data] == ["image", "heatmap"]
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), image)
    z = np.asarray(fig.data[1].z)
    assert z.shape == (40, 56)
    expected = F.interpolate(grid[None, None], size=(40, 56), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(z, expected.numpy(), atol=1e-6)
    assert fig.data[1].zmin == pytest.approx(float(z.min())) and fig.data[1].zmax == pytest.approx(float(z.max()))

    hot = torch.zeros(5, 7)
    hot[1, 5] = 1.0  # the 8 x 8 block at rows 8..15, columns 40..47
    z_hot = np.asarray(heatmap_overlay(image, hot).data[1].z)
    row, col = np.unravel_index(np.argmax(z_hot), z_hot.shape)
    assert 8 <= row < 16 and 40 <= col < 48

    pixel_map = np.random.default_rng(2).random((40, 56))
    np.testing.assert_allclose(np.asarray(heatmap_overlay(image, pixel_map).data[1].z), pixel_map, rtol=1e-6)


def test_tensor_images_are_unnormalised_with_mean_and_std():
    image = _image(16, 24, seed=3)
    mean, std = [0.48, 0.46, 0.41], [0.27, 0.26, 0.28]
    x = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(
        std)[:, None, None]
    for shown in (to_display_image(x, mean, std), to_display_image(x, preprocess=transforms.Normalize(mean, std))):
        assert shown.shape == (16, 24, 3) and shown.dtype == np.uint8
        assert np.abs(shown.astype(int) - image.astype(int)).max() <= 1
    fig = heatmap_overlay(x, torch.rand(2, 3), mean=mean, std=std)
    assert np.asarray(fig.data[1].z).shape == (16, 24)
    with pytest.raises(ValueError):
        to_display_image(x, mean=mean)
    assert_refused(lambda: heatmap_overlay(image, torch.rand(2, 5, 7)),  # a batch of maps is not one map
                   "a map must be [rows, cols] (one image), got shape (2, 5, 7)")


def test_overlay_grid_has_one_panel_per_map():
    image = _image(32, 48)
    maps = {f"m{k}": torch.rand(4, 6) for k in range(5)}
    maps["pixels"] = torch.rand(32, 48)
    fig = overlay_grid(image, maps, cols=4)
    assert len(fig.data) == 2 * len(maps)
    assert [a.text for a in fig.layout.annotations] == list(maps)
    images, heats = fig.data[0::2], fig.data[1::2]
    assert all(t.type == "image" for t in images) and all(t.type == "heatmap" for t in heats)
    axes = [(h.xaxis, h.yaxis) for h in heats]
    assert len(set(axes)) == len(maps) and axes == [(i.xaxis, i.yaxis) for i in images]
    layout = fig.to_plotly_json()["layout"]
    assert "xaxis8" in layout and "xaxis9" not in layout  # 2 rows x 4 columns
    for _name, heat in zip(maps, heats):
        assert np.asarray(heat.z).shape == (32, 48)
        assert heat.zmax == pytest.approx(float(np.asarray(heat.z).max()))
    # every panel has its own colour range, so its own colour bar, just right of its subplot
    assert all(h.showscale for h in heats)
    for k, heat in enumerate(heats, start=1):
        suffix = "" if k == 1 else str(k)
        x_domain = layout[f"xaxis{suffix}"]["domain"]
        assert x_domain[1] < heat.colorbar.x < x_domain[1] + 0.02
    shared = overlay_grid(image, maps, cols=3, shared_scale=True)
    assert len({(h.zmin, h.zmax) for h in shared.data[1::2]}) == 1
    assert [h.showscale for h in shared.data[1::2]] == [True] + [False] * (len(maps) - 1)  # one bar for all


# ---------------------------------------------------------------------------------------- other figures
def test_layer_head_grid_values_labels_and_hover():
    values = torch.arange(12.0).reshape(3, 4) / 12
    hover = {(2, 1): ["a photo of <water>", "blue sky"]}
    fig = layer_head_grid(values, hover_text=hover, title="TextSpan variance")
    assert len(fig.data) == 1
    heat = fig.data[0]
    np.testing.assert_allclose(np.asarray(heat.z), values.numpy())
    assert list(heat.x) == ["H0", "H1", "H2", "H3"] and list(heat.y) == ["L0", "L1", "L2"]
    custom = np.asarray(heat.customdata)
    assert custom.shape == (3, 4)
    assert custom[2, 1] == "a photo of &lt;water&gt;<br>blue sky" and custom[0, 0] == ""
    nested = layer_head_grid(values.numpy(), hover_text=[[f"{l}.{h}" for h in range(4)] for l in range(3)])
    assert np.asarray(nested.data[0].customdata)[1, 3] == "1.3"
    with pytest.raises(ValueError):
        layer_head_grid(values, hover_text=[["x"] * 4] * 2)
    with pytest.raises(ValueError):
        layer_head_grid(values, layer_labels=["a", "b"])


def test_ablation_curve_one_line_per_curve_and_a_baseline():
    curves = {"attention": [(0, 0.8), (1, 0.78), (2, 0.4)], "mlp": [(0, 0.8), (1, 0.79), (2, 0.75)]}
    fig = ablation_curve(curves, baseline=0.8)
    assert len(fig.data) == 3
    for trace, (name, points) in zip(fig.data, curves.items()):
        assert trace.name == name
        assert list(trace.x) == [k for k, _ in points] and list(trace.y) == [a for _, a in points]
    assert list(fig.data[2].y) == [0.8, 0.8] and list(fig.data[2].x) == [0, 2]
    assert len(ablation_curve(curves).data) == 2
    assert_refused(lambda: ablation_curve({"bad": [(0, 0.5, 1)]}),
                   "curve 'bad' must be a non-empty list of (k, accuracy) pairs")


def test_bar_table_groups_metrics_by_method():
    rows = {"baseline": {"average": 0.7, "worst_group": 0.3}, "ablate heads": {"average": 0.75, "worst_group": 0.6},
            "partial": {"average": 0.72}}
    fig = bar_table(rows)
    assert fig.layout.barmode == "group" and [t.name for t in fig.data] == ["average", "worst group"]
    assert list(fig.data[0].x) == list(rows) and list(fig.data[0].y) == [0.7, 0.75, 0.72]
    assert list(fig.data[1].y) == [0.3, 0.6, None]


# ------------------------------------------------------------------------------------------ attention
def _circuitsvis_props(fragment: str) -> dict:
    props_block = r'<script type="application/json" class="circuitsvis-props">(.*?)</script>'
    blocks = re.findall(props_block, fragment, re.DOTALL)
    assert len(blocks) == 1
    return json.loads(blocks[0])


@needs_circuitsvis
def test_circuitsvis_view_carries_the_full_pattern_offline(model, pattern):
    labels = patch_labels(*model.cfg.grid_size)
    fragment = attention_patterns_html(pattern, labels, decimals=4)
    props = _circuitsvis_props(fragment)
    got = torch.tensor(props["attention"])
    assert got.shape == pattern.shape
    assert (got - pattern).abs().max() <= 0.5e-4 + 1e-7
    assert props["tokens"] == labels and props["maskUpperTri"] is False
    assert props["attentionHeadNames"] == [f"Head {h}" for h in range(pattern.shape[0])]
    assert fragment.count(circuitsvis_script()) == 1 and "CircuitsVis.render" in fragment
    assert "unpkg" not in fragment and not _script_srcs(fragment)
    bare = attention_patterns_html(pattern, labels, include_library=False)
    assert circuitsvis_script() not in bare and len(bare) < len(fragment) - 1_000_000


def test_plotly_attention_view_is_unmasked_and_labelled(model, pattern):
    labels = patch_labels(*model.cfg.grid_size)
    fig = attention_pattern_figure(pattern, labels)
    n_heads = pattern.shape[0]
    assert len(fig.data) == n_heads and [t.visible for t in fig.data] == [True] + [False] * (n_heads - 1)
    assert len(fig.layout.updatemenus[0].buttons) == n_heads
    for h, trace in enumerate(fig.data):
        z = np.asarray(trace.z)
        np.testing.assert_allclose(z, pattern[h].numpy(), atol=1e-6)
        assert np.triu(z, k=1).sum() > 0.1  # the upper triangle is drawn, not masked
        assert list(trace.x) == labels and list(trace.y) == labels
    fragment = attention_patterns_html(pattern, labels, backend="plotly")
    assert fragment.count(plotly_script()) == 1 and not _script_srcs(fragment)
    with pytest.raises(ValueError):
        attention_pattern_figure(pattern, labels[:-1])


# ---------------------------------------------------------------------------------------------- page
def test_page_inlines_each_library_once_and_loads_nothing(model, pattern):
    labels = patch_labels(*model.cfg.grid_size)
    overlay = heatmap_overlay(_image(32, 48), torch.rand(4, 6), title="overlay <1>")
    grid = layer_head_grid(torch.rand(3, 4))
    plotly_view = attention_patterns_html(pattern, labels, backend="plotly")
    sections = [
        ("Overlay", overlay),
        ("Heads & layers", [grid, "Variance explained per head.\n\n| head | var |\n|---|---|\n| L2.H1 | 0.31 |"]),
        ("Plotly attention", plotly_view),
    ]
    if circuitsvis_bundle_path() is not None:
        view = attention_patterns_html(pattern, labels)
        sections += [("Attention", view), ("Attention again", view)]
    page = figures_to_html(sections, title="Report <test>")

    plotly_js = plotly.offline.get_plotlyjs()
    assert page.count(plotly_js[:2000]) == 1 and page.count(plotly_script()) == 1
    assert page.index(plotly_script()) < page.index("<body>")
    if circuitsvis_bundle_path() is not None:
        assert page.count(circuitsvis_script()) == 1 and page.count('class="circuitsvis-props"') == 2
    assert not _script_srcs(page)
    assert not re.search(r"""(import[^;]{0,200}from\s*|@import\s*(url\()?)["']?https?:""", page)
    for fig in (overlay, grid):
        trace_type = fig.data[-1].type
        assert f'"type":"{trace_type}"' in page.replace(" ", "")
    assert page.count("Plotly.newPlot(") == 3
    assert "<title>Report &lt;test&gt;</title>" in page and "<h2>Heads &amp; layers</h2>" in page
    assert "<td>L2.H1</td><td class='num'>0.31</td>" in page
    assert figures_to_html([("only text", "hello")]).count("data-vit-lens-lib") == 0  # no figure: no plotly.js
    with pytest.raises(TypeError):
        figures_to_html([("bad", 3.0)])


def test_markdown_subset():
    text = "# Title\nSome *text* with `a<b`\nand **bold**.\n\n- one\n- two\n\n| a | b |\n|---|--:|\n| x | 1.5% |"
    out = markdown_to_html(text)
    assert "<h2>Title</h2>" in out
    assert "<p>Some <em>text</em> with <code>a&lt;b</code> and <strong>bold</strong>.</p>" in out
    assert "<ul><li>one</li><li>two</li></ul>" in out
    assert "<table><tr><th>a</th><th>b</th></tr><tr><td>x</td><td class='num'>1.5%</td></tr></table>" in out


def test_html_table_escapes_marks_numbers_and_keeps_raw_cells():
    table = html_table(["a<b", "n"], [["x & y", "12.5%"], [RawHTML("<i>raw</i>"), "-3"], ["n/a", "1,024"]])
    assert table.startswith("<table><tr><th>a&lt;b</th><th>n</th></tr>") and table.endswith("</table>")
    assert "<tr><td>x &amp; y</td><td class='num'>12.5%</td></tr>" in table
    assert "<tr><td><i>raw</i></td><td class='num'>-3</td></tr>" in table
    assert "<tr><td class='num'>n/a</td><td class='num'>1,024</td></tr>" in table
    assert escape("\"'<&>") == "&quot;&#x27;&lt;&amp;&gt;"


def test_pages_escape_their_records_and_share_the_one_stylesheet():
    heads = [{"head": "L1.H<2>", "rank": 7, "total_variance_explained": 0.5,
              "picks": [{"order": 1, "text": "a <b> & 'c'", "variance_explained": 0.25},
                        {"order": 2, "text": "plain", "variance_explained": -0.01}]}]
    page = textspan_page(heads, title="Heads <x>")
    assert "<title>Heads &lt;x&gt;</title>" in page and "L1.H&lt;2&gt;" in page
    assert "a &lt;b&gt; &amp; &#x27;c&#x27;" in page and "<td class='num'>25.00%</td>" in page
    assert "style='width:75.0px'" in page and "style='width:0.0px'" in page  # negative shares draw no bar
    assert "<script" not in page and "http" not in page and ".cards {" in page

    image = np.zeros((8, 8, 3), dtype=np.uint8)
    truth = np.eye(8, dtype=bool)
    fig = segmentation_example_figure("scene <1>", image, truth, {"m": np.eye(8, dtype=np.float32)}, {"m": truth},
                                      titles={"m": "Method M"})
    assert [a.text for a in fig.layout.annotations] == ["image", "Method M", "ground truth", "m mask"]
    assert fig.layout.title.text == "scene &lt;1&gt;"
    with pytest.raises(ValueError, match="same methods"):
        segmentation_example_figure("x", image, truth, {"m": truth.astype(np.float32)}, {})
    page = segmentation_page(["method", "mIoU"], [["M <1>", "50.00"]], [fig, fig], [("bad<file>.png", "unreadable")],
                             title="Seg", note="Percent.")
    assert "<td>M &lt;1&gt;</td><td class='num'>50.00</td>" in page and "<p>Percent.</p>" in page
    assert "<li>bad&lt;file&gt;.png: unreadable</li>" in page
    assert page.count("Plotly.newPlot(") == 2 and page.count(plotly_script()) == 1 and ".cards {" in page
