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
    segmentation_example_figure,
    to_display_image,
)
from vit_lens_clip.viz.html import (
    Markdown,
    RawHTML,
    escape,
    figure_html,
    figures_to_html,
    html_table,
    markdown_to_html,
)
from vit_lens_clip.viz.pages import segmentation_page, textspan_cards, textspan_page

__all__ = [
    "Markdown",
    "RawHTML",
    "ablation_curve",
    "attention_pattern_figure",
    "attention_patterns_html",
    "bar_table",
    "escape",
    "figure_html",
    "figures_to_html",
    "heatmap_overlay",
    "html_table",
    "layer_head_grid",
    "map_to_pixels",
    "markdown_to_html",
    "overlay_grid",
    "patch_labels",
    "segmentation_example_figure",
    "segmentation_page",
    "textspan_cards",
    "textspan_page",
    "to_display_image",
]
