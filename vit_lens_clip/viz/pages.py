"""Offline pages of method results, built from plain records (dicts, strings, figures) by ``viz.html``.

The methods hand over data (``textspan.report.head_records``, ``spatial.evaluate.segmentation_table``); the
markup, stylesheet and escaping are all ``viz.html``'s, so every page of the package looks and escapes alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from vit_lens_clip.viz.html import RawHTML, escape, figures_to_html, html_table


def _bar(fraction: float) -> RawHTML:
    """A horizontal bar 300 px long at fraction 1 (negative fractions draw nothing)."""
    return RawHTML(f"<span class='bar' style='width:{max(0.0, fraction) * 300:.1f}px'></span>")


def textspan_cards(heads: Sequence[Mapping[str, Any]]) -> RawHTML:
    """One card per head with its picked texts, each pick's share of the variance and a bar of that share.

    ``heads``: records as ``methods.textspan.report.head_records`` gives them: ``head`` (a label), ``rank``,
    ``total_variance_explained`` and ``picks`` (dicts with ``order``, ``text``, ``variance_explained``).
    """
    cards = []
    for head in heads:
        rows = [[pick["order"], pick["text"], f"{pick['variance_explained']:.2%}", _bar(pick["variance_explained"])]
                for pick in head["picks"]]
        cards.append(
            f"<div class='card'><h3>{escape(head['head'])} <small>rank {int(head['rank'])}, "
            f"{head['total_variance_explained']:.1%} explained</small></h3>"
            + html_table(["#", "text", "var.", ""], rows) + "</div>"
        )
    return RawHTML(f"<div class='cards'>{''.join(cards)}</div>")


def textspan_page(heads: Sequence[Mapping[str, Any]], title: str = "TextSpan") -> str:
    """A page of ``textspan_cards``; no figure, so the page holds no script."""
    return figures_to_html([(f"Heads ({len(heads)})", textspan_cards(heads))], title=title, table_of_contents=False)


def segmentation_page(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    figures: Sequence[go.Figure] = (),
    skipped: Sequence[tuple[str, str]] = (),
    title: str = "Zero-shot segmentation",
    note: str = "",
) -> str:
    """The benchmark table (``header``, ``rows`` of formatted cells), a ``note`` under it, the inputs the
    dataset left out (``skipped``: (file, reason)), then one figure per example image."""
    results = [html_table(header, rows)]
    if note:
        results.append(RawHTML(f"<p>{escape(note)}</p>"))
    if skipped:
        results.append(RawHTML(f"<p>Skipped inputs ({len(skipped)}):</p><ul>"
                               + "".join(f"<li>{escape(name)}: {escape(reason)}</li>" for name, reason in skipped)
                               + "</ul>"))
    sections: list[tuple[str, Any]] = [("Results", results)]
    if figures:
        sections.append(("Examples", list(figures)))
    return figures_to_html(sections, title=title, table_of_contents=False)
