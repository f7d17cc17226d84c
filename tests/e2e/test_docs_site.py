"""The documentation site builds in strict mode and works in a browser: each page loads in headless Chromium with no
console error, and the site's search finds a function of the API reference.

The site is built into tmp_path with `mkdocs build --strict` (mkdocs.yml) and served over HTTP on localhost (the
search runs in a web worker, which file:// pages may not start). Chromium is driven through the DevTools protocol,
with a minimal WebSocket client from the standard library, to collect what its console shows: uncaught
exceptions, console.error calls and failed loads (``Log.entryAdded`` errors). Skipped with the reason where the
`docs` extra (MkDocs and its plugins) or Chromium is not installed; `.ci/docs` runs it where both are.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from e2e.devtools import CHROMIUM, chromium, open_page

ROOT = Path(__file__).resolve().parents[2]
DOCS_MODULES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "mkdocs_jupyter",
                "mkdocs_gen_files", "mkdocs_literate_nav")
MISSING = [name for name in DOCS_MODULES if importlib.util.find_spec(name.split(".")[0]) is None
           or importlib.util.find_spec(name) is None]
pytestmark = [
    pytest.mark.skipif(bool(MISSING), reason=f"the docs extra is not installed (missing {', '.join(MISSING)}): "
                                             "pip install -e '.[docs]'; .ci/docs runs this test"),
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium / chromium-browser / google-chrome on PATH"),
]
SAMPLED_MODULE_PAGES = ("api/methods/textspan/algorithm/", "api/model/hooked_vit/", "api/loading/")
SEARCHED = "text_span"  # a function of vit_lens_clip.methods.textspan.algorithm
QUIET_MKDOCS = {"DISABLE_MKDOCS_2_WARNING": "true", "NO_MKDOCS_2_WARNING": "1"}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                           "--site-dir", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **QUIET_MKDOCS}, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return out


@pytest.fixture(scope="module")
def base_url(site):
    handler = functools.partial(type("Quiet", (http.server.SimpleHTTPRequestHandler,),
                                     {"log_message": lambda *args: None}), directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    yield from chromium(tmp_path_factory.mktemp("chromium"))


def _pages(site: Path) -> list[str]:
    """The pages to open: every page but the API pages of single modules, of which a few are opened."""
    pages = []
    for index in sorted(site.rglob("index.html")):
        relative = index.parent.relative_to(site).as_posix()
        relative = "" if relative == "." else relative + "/"
        is_package = any(path.is_dir() for path in index.parent.iterdir())
        if relative.startswith("api/") and not is_package and relative not in SAMPLED_MODULE_PAGES:
            continue
        pages.append(relative)
    return pages


def test_docs_pages_load_withoutconsole_errors(site, base_url, browser):
    pages = _pages(site)
    assert {"", "getting-started/", "demos/01_quickstart/", "api/", "api/model/hooked_vit/"} <= set(pages), pages
    failures = {}
    for page in pages:
        errors = open_page(browser, base_url + page)
        title = browser.evaluate("document.title")
        if errors or not title:
            failures[page] = errors or ["no title"]
    assert not failures, failures


def test_docs_search_finds_a_function(site, base_url, browser):
    assert not open_page(browser, f"{base_url}?q={SEARCHED}")
    read = ("Array.from(document.querySelectorAll('.md-search-result__item')).map("
            "e => [e.querySelector('a') ? e.querySelector('a').href : '', e.textContent.replace(/\\s+/g, ' ')])")
    deadline, results = time.monotonic() + 120, []
    while time.monotonic() < deadline and not results:  # the worker indexes the site first
        results = browser.evaluate(read) or []
        time.sleep(0.5)
    assert results, browser.evaluate("document.querySelector('.md-search-result__meta').textContent")
    links = [href for href, _ in results]
    assert any("api/methods/textspan/algorithm/" in href for href in links), results[:5]
    assert any(SEARCHED in text for _, text in results), results[:5]
