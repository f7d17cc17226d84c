"""Figures and offline HTML pages for vit_lens_clip results (plotly, with circuitsvis for attention)."""

from vit_lens_clip.viz.attention import (
    attention_pattern_figure,
    attention_patterns_html,
    patch_labels,
)
from vit_lens_clip.viz.figures import (
    ablation_curve,
    bar_table,
    heatmap_overlay,
    layer_head_grid,
    map_to_pixels,
    overlay_grid,
    to_display_image,
)
from vit_lens_clip.viz.html import (
    Markdown,
    RawHTML,
    figure_html,
    figures_to_html,
    markdown_to_html,
)

__all__ = [
    "Markdown",
    "RawHTML",
    "ablation_curve",
    "attention_pattern_figure",
    "attention_patterns_html",
    "bar_table",
    "figure_html",
    "figures_to_html",
    "heatmap_overlay",
    "layer_head_grid",
    "map_to_pixels",
    "markdown_to_html",
    "overlay_grid",
    "patch_labels",
    "to_display_image",
]
