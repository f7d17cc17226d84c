"""Every Python sample in README.md and docs/*.md runs (blocks of one page share a namespace)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _pages_with_code():
    return [p for p in PAGES if BLOCK.search(p.read_text())]


def test_docs_have_samples():
    assert len(_pages_with_code()) >= 3


@pytest.mark.parametrize("page", _pages_with_code(), ids=lambda p: p.name)
def test_doc_samples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for i, block in enumerate(BLOCK.findall(page.read_text())):
        code = compile(block, f"{page.name}[block {i}]", "exec")
        exec(code, namespace)  # noqa: S102 - the docs are this project's own code samples
