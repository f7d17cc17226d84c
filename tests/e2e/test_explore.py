"""``vit-lens-clip explore`` end to end: collect 64 shapes scenes with the embedded model, build the site, check
every head page, open pages in headless Chromium (no console errors, search, arrow keys), and measure the
search's precision on a colour of the shapes world (docs/explorer.md states the number)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from e2e.devtools import CHROMIUM, chromium, console_errors, open_page
from vit_lens_clip.app.cli import main
from vit_lens_clip.app.explore import build_site_data
from vit_lens_clip.datasets.shapes_world import ShapesDataset
from vit_lens_clip.viz.explorer import query_examples, rank_units

N_IMAGES = 64


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("collection")
    assert main(["collect", "--data", f"shapes:{N_IMAGES}", "--out", str(out), "--parts", "heads,embed,means",
                 "--last-layers", "4", "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def site(collection, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    start = time.perf_counter()
    assert main(["explore", str(collection), "--out", str(out), "--examples", "8", "--bottom", "--quiet",
                 "--queries", "something vermilion"]) == 0
    print(f"explore of {N_IMAGES} images: {time.perf_counter() - start:.1f} s")
    return out


@pytest.fixture(scope="module")
def data(collection):
    return build_site_data(collection, queries=["something vermilion"])


def test_every_head_has_a_page_with_images_and_links(site):
    pages = sorted((site / "heads").glob("L*H*.html"))
    assert [p.stem for p in pages] == sorted(f"L{layer}H{h}" for layer in range(2, 6) for h in range(4))
    index = (site / "index.html").read_text()
    for page in pages:
        assert f"href='heads/{page.name}'" in index
        text = page.read_text()
        images = re.findall(r"<img loading='lazy' src='\.\./img/([^']+)'", text)
        assert len(images) == 16 and all((site / "img" / name).is_file() for name in images), page.name
        assert sum("_bottom_" in name for name in images) == 8 and "Bottom examples" in text
        links = re.findall(r"href='([^'#]+)'", text)
        assert "../index.html" in links and all((page.parent / link).is_file() for link in links), page.name


def test_searching_a_colour_finds_a_head_whose_top_images_have_it(data):
    colours = [ShapesDataset(N_IMAGES, 0).scene(i).attributes.colour for i in range(N_IMAGES)]
    head, cosine = rank_units(data, "red")[0]
    top = query_examples(data, head, "red", k=8)
    precision, chance = sum(colours[i] == "red" for i, _ in top) / len(top), colours.count("red") / N_IMAGES
    print(f"search 'red': {head} (cosine {cosine:.3f}), {precision:.3f} of its top 8 images are red; chance {chance:.3f}")
    assert precision >= 0.5 > chance


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("no chromium / chromium-browser / google-chrome on PATH")
    yield from chromium(tmp_path_factory.mktemp("chromium"))


def test_pages_load_search_and_navigate_in_chromium(site, data, browser):
    assert open_page(browser, (site / "index.html").as_uri()) == []
    assert browser.evaluate("document.querySelectorAll('.js-plotly-plot').length") == 1
    found = browser.evaluate("(function () { var box = document.getElementById('search'); box.value = 'red';"
                             "box.dispatchEvent(new Event('input'));"
                             "return Array.from(document.querySelectorAll('#search-results > li > a'))"
                             ".map(function (a) { return a.textContent; }); })()")
    assert found[0] == rank_units(data, "red")[0][0]
    assert browser.evaluate("document.querySelectorAll('#search-results .strip img').length") == 3 * 8
    assert console_errors(browser.events) == []
    vermilion = browser.evaluate("(function () { var box = document.getElementById('search'); box.value = 'vermilion';"
                               "box.dispatchEvent(new Event('input'));"
                               "return document.querySelectorAll('#search-results > li').length; })()")
    assert vermilion == 10  # a text outside the pool, embedded at build time (--queries)

    assert open_page(browser, (site / "heads" / "L3H1.html").as_uri()) == []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not browser.evaluate(
            "document.images.length > 0 && document.images[0].complete && document.images[0].naturalWidth > 0"):
        time.sleep(0.2)
    assert browser.evaluate("document.images[0].naturalWidth") == 2 * 128 + 4
    browser.events.clear()
    for kind in ("keyDown", "keyUp"):
        browser.call("Input.dispatchKeyEvent", type=kind, key="ArrowRight", code="ArrowRight", windowsVirtualKeyCode=39)
    browser.wait_for("Page.loadEventFired", timeout=30)
    assert browser.evaluate("location.pathname").endswith("/heads/L3H2.html")
    for kind in ("keyDown", "keyUp"):
        browser.call("Input.dispatchKeyEvent", type=kind, key="ArrowLeft", code="ArrowLeft", windowsVirtualKeyCode=37)
    browser.wait_for("Page.loadEventFired", timeout=30)
    assert browser.evaluate("location.pathname").endswith("/heads/L3H1.html")
    assert console_errors(browser.events) == []
