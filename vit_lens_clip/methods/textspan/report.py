"""Per-head TextSpan tables: records, JSON and Markdown; the offline HTML page is drawn by ``viz.pages``.

Rows are a dict ``{(layer, head): result}`` where each result is a single-head :class:`TextSpanResult`
(``result[layer, head]`` or ``result.rows()`` gives them). Picked texts come from the result, or from
``pool`` (the full text list, indexed by the picked indices) when the result carries none.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vit_lens_clip.methods.textspan.algorithm import TextSpanResult
from vit_lens_clip.viz.pages import textspan_page


def head_label(key: Hashable) -> str:
    """'L22.H11' for a (layer, head) pair, str(key) otherwise."""
    if isinstance(key, tuple) and len(key) == 2 and all(isinstance(x, int) for x in key):
        return f"L{key[0]}.H{key[1]}"
    return str(key)


def head_table(result: TextSpanResult, pool: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per pick: order, text index, text, variance explained, cumulative variance explained."""
    if result.indices.ndim != 1:
        raise ValueError(f"need a single-head result (indices [k]); got {tuple(result.indices.shape)}")
    indices = result.indices.tolist()
    fractions = result.variance_explained.tolist()
    if result.texts is not None:
        texts = list(result.texts)
    elif pool is not None:
        texts = [pool[j] for j in indices]
    else:
        texts = [f"text #{j}" for j in indices]
    rows, cumulative = [], 0.0
    for order, (j, text, fraction) in enumerate(zip(indices, texts, fractions), start=1):
        cumulative += fraction
        rows.append(
            {"order": order, "index": j, "text": text, "variance_explained": fraction, "cumulative": cumulative}
        )
    return rows


def _sorted_items(rows: Mapping[Hashable, TextSpanResult]) -> list[tuple[Hashable, TextSpanResult]]:
    try:
        return sorted(rows.items(), key=lambda item: item[0])
    except TypeError:  # keys of mixed types: keep the given order
        return list(rows.items())


def head_records(rows: Mapping[Hashable, TextSpanResult], pool: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One record per head (sorted by key): its label, layer/head if known, kept rank, pick table
    (``head_table``) and the total fraction of its variance the picks explain."""
    heads = []
    for key, result in _sorted_items(rows):
        entry: dict[str, Any] = {"head": head_label(key)}
        if isinstance(key, tuple) and len(key) == 2:
            entry["layer"], entry["head_index"] = key
        entry["rank"] = int(result.ranks)
        entry["picks"] = head_table(result, pool)
        entry["total_variance_explained"] = float(result.variance_explained.sum())
        heads.append(entry)
    return heads


def to_json(rows: Mapping[Hashable, TextSpanResult], pool: Sequence[str] | None = None) -> str:
    """JSON ``{"heads": head_records(rows, pool)}``."""
    return json.dumps({"heads": head_records(rows, pool)}, indent=2, ensure_ascii=False)


def to_markdown(
    rows: Mapping[Hashable, TextSpanResult], pool: Sequence[str] | None = None, title: str = "TextSpan"
) -> str:
    """A Markdown section per head with a table of its picks."""
    lines = [f"# {title}", ""]
    for key, result in _sorted_items(rows):
        table = head_table(result, pool)
        total = table[-1]["cumulative"] if table else 0.0
        lines += [
            f"## {head_label(key)} (rank {int(result.ranks)}, {total:.1%} of variance explained)",
            "",
            "| # | text | variance explained | cumulative |",
            "|---|---|---|---|",
        ]
        for row in table:
            text = row["text"].replace("|", "\\|")
            lines.append(f"| {row['order']} | {text} | {row['variance_explained']:.2%} | {row['cumulative']:.2%} |")
        lines.append("")
    return "\n".join(lines)


def to_html(rows: Mapping[Hashable, TextSpanResult], pool: Sequence[str] | None = None, title: str = "TextSpan") -> str:
    """A self-contained HTML page (no scripts or external resources) with one card per head
    (``viz.pages.textspan_page`` of ``head_records``)."""
    return textspan_page(head_records(rows, pool), title)


def write_reports(
    rows: Mapping[Hashable, TextSpanResult],
    out_dir: str | Path,
    stem: str = "textspan",
    pool: Sequence[str] | None = None,
    title: str = "TextSpan",
) -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.html`` under out_dir; return their paths by format."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    contents = {"json": to_json(rows, pool), "md": to_markdown(rows, pool, title), "html": to_html(rows, pool, title)}
    paths = {}
    for fmt, text in contents.items():
        paths[fmt] = out / f"{stem}.{fmt}"
        paths[fmt].write_text(text, encoding="utf-8")
    return paths
