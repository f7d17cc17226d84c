"""Pages made at build time by mkdocs-gen-files (mkdocs.yml), so that the site follows the package as it moves.

- ``api/<module path>.md``: one page per public module of vit_lens_clip (no part of the dotted name starts with
  ``_``), each a mkdocstrings ``::: module`` block rendered from the docstrings and signatures, and
  ``api/SUMMARY.md``, their navigation (mkdocs-literate-nav);
- ``demos/*.ipynb``: the demo notebooks, rendered by mkdocs-jupyter (not executed);
- ``changelog.md``: CHANGELOG.md at the top of the repository;
- ``model-card.md``: the embedded model's card, which the pages link to as a file of the package
  (``../vit_lens_clip/embedded/shapes/MODEL_CARD.md``, right when browsing the repository); those links are
  pointed at this page in the site's copy of each page.
"""

from __future__ import annotations

from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "vit_lens_clip"
MODEL_CARD = "../vit_lens_clip/embedded/shapes/MODEL_CARD.md"

nav = mkdocs_gen_files.Nav()
for path in sorted(PACKAGE.rglob("*.py")):
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if any(part.startswith("_") for part in parts):
        continue  # private modules and __main__
    identifier, inner = ".".join(parts), parts[1:]
    page = Path(*inner).with_suffix(".md") if inner else Path("index.md")
    nav[inner or (identifier,)] = page.as_posix()
    with mkdocs_gen_files.open(Path("api") / page, "w") as out:
        out.write(f"# `{identifier}`\n\n::: {identifier}\n")
    mkdocs_gen_files.set_edit_path(Path("api") / page, path.relative_to(ROOT))
with mkdocs_gen_files.open("api/SUMMARY.md", "w") as out:
    out.writelines(nav.build_literate_nav())

for notebook in sorted((ROOT / "demos").glob("*.ipynb")):
    with mkdocs_gen_files.open(f"demos/{notebook.name}", "w") as out:
        out.write(notebook.read_text(encoding="utf-8"))

with mkdocs_gen_files.open("changelog.md", "w") as out:  # the repository's CHANGELOG.md, as a page
    out.write((ROOT / "CHANGELOG.md").read_text(encoding="utf-8"))

with mkdocs_gen_files.open("model-card.md", "w") as out:
    out.write((PACKAGE / "embedded" / "shapes" / "MODEL_CARD.md").read_text(encoding="utf-8"))
for page in sorted((ROOT / "docs").glob("*.md")):
    text = page.read_text(encoding="utf-8")
    if MODEL_CARD in text:
        with mkdocs_gen_files.open(page.name, "w") as out:
            out.write(text.replace(MODEL_CARD, "model-card.md"))
