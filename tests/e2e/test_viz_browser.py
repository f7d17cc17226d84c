"""A page from figures_to_html draws in a headless Chromium with no network: plotly's SVGs and circuitsvis' view.

Skipped only when no Chromium executable is installed (``apt-get install chromium`` on Debian).
"""

import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from vit_lens_clip.viz.attention import (
    attention_patterns_html,
    circuitsvis_bundle_path,
    patch_labels,
)
from vit_lens_clip.viz.figures import ablation_curve, heatmap_overlay, layer_head_grid
from vit_lens_clip.viz.html import figures_to_html

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium / chromium-browser / google-chrome on PATH")


def _dump_dom(page_path, profile_dir) -> str:
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile_dir}", "--virtual-time-budget=5000", "--dump-dom", page_path.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_offline_page_renders_plotly_and_circuitsvis(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    pattern = torch.softmax(torch.randn(2, 25, 25, generator=torch.Generator().manual_seed(0)), dim=-1)
    figures = [
        heatmap_overlay(image, torch.rand(4, 6), title="overlay"),
        layer_head_grid(torch.rand(3, 4)),
        ablation_curve({"attention": [(0, 0.8), (1, 0.7), (2, 0.3)]}, baseline=0.8),
    ]
    sections = [(f"figure {i}", fig) for i, fig in enumerate(figures)]
    sections.append(("attention (plotly)", attention_patterns_html(pattern, patch_labels(4, 6), backend="plotly")))
    n_views = 0
    if circuitsvis_bundle_path() is not None:
        sections.append(("attention (circuitsvis)", attention_patterns_html(pattern, patch_labels(4, 6))))
        n_views = 1
    page = tmp_path / "page.html"
    page.write_text(figures_to_html(sections, title="browser check"), encoding="utf-8")

    dom = _dump_dom(page, tmp_path / "profile")
    n_plots = len(figures) + 1
    drawn = re.findall(r'<div id="(fig-[0-9a-f]+)"[^>]*class="[^"]*js-plotly-plot', dom)  # plotly marks its divs
    assert len(set(drawn)) == n_plots
    assert dom.count('class="main-svg"') >= 2 * n_plots
    assert dom.count('class="hm"') >= 3  # heatmap layers of the overlay, the grid and the attention figure
    assert len(re.findall(r"<h3[^>]*>Head Selector", dom)) == n_views
    if n_views:
        assert "<canvas" in dom
