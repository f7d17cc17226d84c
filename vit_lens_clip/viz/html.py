"""The package's one HTML writer: a self-contained, offline page from a list of sections (plotly figures, raw
HTML, Markdown-ish text), its stylesheet, escaping and tables. Pages of method results (``viz.pages``) and the
report are built from these; no other module writes markup.

plotly.js is inlined exactly once in ``<head>`` (``plotly.offline.get_plotlyjs()``) and every figure is
written with ``include_plotlyjs=False``. JavaScript libraries that sections inline themselves (the circuitsvis
bundle of ``viz.attention``, or plotly.js) are recognised by their exact ``<script data-vit-lens-lib=...>``
tag, removed from the sections and placed once in ``<head>``. No script is loaded from a URL.
"""

from __future__ import annotations

import functools
import html
import re
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Union

import plotly.graph_objects as go
import plotly.offline

Content = Union[go.Figure, str, "RawHTML", "Markdown", Sequence]

_CSS = """
body { font-family: system-ui, -apple-system, sans-serif; margin: 2em auto; max-width: 1200px; color: #222;
       padding: 0 1em; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: 0.3em; }
h2 { margin-top: 2em; border-bottom: 1px solid #eee; padding-bottom: 0.2em; }
nav ul { columns: 2; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
td, th { border: 1px solid #ccc; padding: 3px 9px; text-align: left; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { background: #f3f3f3; padding: 0 3px; border-radius: 3px; }
.figure { margin: 1em 0; overflow-x: auto; }
.cards { display: flex; flex-wrap: wrap; gap: 1.2em; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: 0.6em 0.8em; min-width: 22em; }
.card h3 { font-size: 1.05em; margin: 0 0 0.4em 0; }
.card table { width: 100%; }
.bar { background: #4a7bd0; height: 0.7em; display: inline-block; }
"""


class RawHTML(str):
    """A section body to insert verbatim."""


class Markdown(str):
    """A section body to convert with the small Markdown subset of ``markdown_to_html``."""


def plotly_script() -> str:
    """plotly.js (the installed version) as one inline ``<script>`` with a recognisable tag."""
    return _plotly_script()


@functools.lru_cache(maxsize=1)
def _plotly_script() -> str:
    source = plotly.offline.get_plotlyjs().replace("</script", "<\\/script")
    return f'<script data-vit-lens-lib="plotly">{source}</script>'


def circuitsvis_bundle_path() -> Path | None:
    """The JavaScript bundle shipped inside the installed circuitsvis package, or None."""
    try:
        import circuitsvis  # optional dependency: pages work without it (plotly fallback)
    except ImportError:
        return None
    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    return path if path.is_file() else None


@functools.lru_cache(maxsize=1)
def circuitsvis_script() -> str:
    """The circuitsvis bundle as one inline classic ``<script>`` (defines ``window.CircuitsVis``).

    "</script" inside the bundle (string literals) is written "<\\/script", which JavaScript reads identically,
    so the tag cannot close early. ``html.figures_to_html`` keeps a single copy of this exact string per page.
    """
    path = circuitsvis_bundle_path()
    if path is None:
        raise RuntimeError("circuitsvis (with its bundled dist/cdn/iife.js) is not installed")
    source = path.read_text(encoding="utf-8").replace("</script", "<\\/script")
    return f'<script data-vit-lens-lib="circuitsvis">{source}</script>'


def _library_scripts() -> dict[str, str]:
    """Inline library tags that may appear inside sections, by name (circuitsvis only when installed)."""
    scripts = {"plotly": plotly_script()}
    if circuitsvis_bundle_path() is not None:
        scripts["circuitsvis"] = circuitsvis_script()
    return scripts


def figure_html(fig: go.Figure) -> str:
    """A figure as a ``<div>`` plus its drawing script, without plotly.js (the page provides it)."""
    height = fig.layout.height or 450
    width = f"{fig.layout.width}px" if fig.layout.width else "100%"
    return fig.to_html(
        full_html=False, include_plotlyjs=False, include_mathjax=False,
        div_id=f"fig-{uuid.uuid4().hex[:12]}", default_height=f"{height}px", default_width=width,
        config={"displaylogo": False, "responsive": True},
    )


# ---------------------------------------------------------------------------------------------- markdown
def _inline(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"(?<![*\w])\*([^*\s][^*]*)\*(?!\*)", r"<em>\1</em>", text)


_NUMBER = re.compile(r"^[-+]?[\d.,]+%?$|^n/a$")


def escape(value: object) -> str:
    """``str(value)`` with ``& < > " '`` escaped: safe as element text and inside quoted attributes."""
    return html.escape(str(value))


def html_table(
    header: Sequence[object], rows: Sequence[Sequence[object]], cell: Callable[[str], str] = escape
) -> RawHTML:
    """A ``<table>``: the header as ``<th>`` cells, then one ``<tr>`` per row.

    Each cell is ``cell(str(value))`` (escaped by default), except ``RawHTML`` cells, inserted verbatim. A cell
    that reads as a number (``12.5``, ``-3%``, ``1,024``, ``n/a``) gets class ``num`` (right-aligned).
    """
    def td(value: object) -> str:
        if isinstance(value, RawHTML):
            return f"<td>{value}</td>"
        text = str(value)
        return f"<td class='num'>{cell(text)}</td>" if _NUMBER.match(text) else f"<td>{cell(text)}</td>"

    out = ["<table><tr>" + "".join(f"<th>{cell(str(c))}</th>" for c in header) + "</tr>"]
    out += ["<tr>" + "".join(td(c) for c in row) + "</tr>" for row in rows]
    return RawHTML("".join(out) + "</table>")


def _table(lines: list[str]) -> str:
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    rows = [r for r in rows if not all(re.fullmatch(r":?-{2,}:?", c) for c in r)]
    return html_table(rows[0], rows[1:], cell=_inline)


def markdown_to_html(text: str) -> str:
    """A small Markdown subset: ``#`` headings, ``- `` bullet lists, ``|`` tables, blank-line paragraphs,
    inline ``code``, **bold** and *italic*. Everything else is escaped text."""
    blocks, paragraph, bullets, table = [], [], [], []

    def flush() -> None:
        if paragraph:
            blocks.append("<p>" + _inline(" ".join(paragraph)) + "</p>")
            paragraph.clear()
        if bullets:
            blocks.append("<ul>" + "".join(f"<li>{_inline(b)}</li>" for b in bullets) + "</ul>")
            bullets.clear()
        if table:
            blocks.append(_table(table))
            table.clear()

    for raw in text.splitlines():
        line = raw.strip()
        kind = "table" if line.startswith("|") else "bullet" if line.startswith(("- ", "* ")) else "text"
        if not line or (kind == "table") != bool(table) or (kind == "bullet") != bool(bullets):
            flush()
        if not line:
            continue
        heading = re.match(r"^(#{1,6})\s+(.*)$", line)
        if heading:
            flush()
            level = min(len(heading.group(1)) + 1, 6)  # the page title is the only <h1>
            blocks.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif kind == "table":
            table.append(line)
        elif kind == "bullet":
            bullets.append(line[2:])
        else:
            paragraph.append(line)
    flush()
    return "\n".join(blocks)


# -------------------------------------------------------------------------------------------------- page
def _looks_like_html(text: str) -> bool:
    return text.lstrip().startswith("<")


def _render(content: Content, libraries: dict[str, str], used: set[str]) -> str:
    if isinstance(content, go.Figure):
        used.add("plotly")
        return f"<div class='figure'>{figure_html(content)}</div>"
    if isinstance(content, Markdown):
        return markdown_to_html(content)
    if isinstance(content, str):
        if not isinstance(content, RawHTML) and not _looks_like_html(content):
            return markdown_to_html(content)
        for name, script in libraries.items():
            if script in content:
                used.add(name)
                content = content.replace(script, "")
        if "Plotly." in content:
            used.add("plotly")
        return str(content)
    if isinstance(content, Sequence):
        return "\n".join(_render(c, libraries, used) for c in content)
    raise TypeError(f"a section must be a plotly Figure, a str (HTML or Markdown) or a list of them, "
                    f"got {type(content).__name__}")


def _anchor(title: str, index: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return f"s{index}-{slug}" if slug else f"s{index}"


def figures_to_html(sections: Sequence[tuple[str, Content]], title: str = "vit_lens_clip report",
                    table_of_contents: bool = True) -> str:
    """A complete offline HTML page: ``<h1>title``, an optional contents list, then one ``<h2>`` per section.

    A section body is a plotly Figure, an HTML string (starts with "<", or ``RawHTML``), Markdown-ish text
    (anything else, or ``Markdown``), or a list of these.
    """
    libraries = _library_scripts()
    used: set[str] = set()
    body = []
    for i, section in enumerate(sections):
        if not isinstance(section, (tuple, list)) or len(section) != 2:
            raise ValueError(f"section {i} must be a (title, content) pair")
        heading, content = section
        anchor = _anchor(str(heading), i)
        body.append(f"<section id='{anchor}'><h2>{escape(heading)}</h2>\n"
                    f"{_render(content, libraries, used)}\n</section>")
    toc = ""
    if table_of_contents and len(sections) > 1:
        toc = "<nav><ul>" + "".join(
            f"<li><a href='#{_anchor(str(h), i)}'>{escape(h)}</a></li>" for i, (h, _) in enumerate(sections)
        ) + "</ul></nav>"
    head_scripts = "".join(libraries[name] for name in ("plotly", "circuitsvis") if name in used)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{escape(title)}</title>"
        f"<style>{_CSS}</style>\n{head_scripts}\n</head><body>\n<h1>{escape(title)}</h1>\n{toc}\n"
        + "\n".join(body) + "\n</body></html>\n"
    )
