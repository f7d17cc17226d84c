"""The documentation site builds in strict mode and works in a browser: each page loads in headless Chromium with no
console error, and the site's search finds a function of the API reference.

The site is built into tmp_path with `mkdocs build --strict` (mkdocs.yml) and served over HTTP on localhost (the
search runs in a web worker, which file:// pages may not start). Chromium is driven through the DevTools protocol,
with a minimal WebSocket client from the standard library, to collect what its console shows: uncaught
exceptions, console.error calls and failed loads (``Log.entryAdded`` errors). Skipped with the reason where the
`docs` extra (MkDocs and its plugins) or Chromium is not installed; `.ci/docs` runs it where both are.
"""

from __future__ import annotations

import base64
import functools
import http.server
import importlib.util
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS_MODULES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "mkdocs_jupyter",
                "mkdocs_gen_files", "mkdocs_literate_nav")
MISSING = [name for name in DOCS_MODULES if importlib.util.find_spec(name.split(".")[0]) is None
           or importlib.util.find_spec(name) is None]
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = [
    pytest.mark.skipif(bool(MISSING), reason=f"the docs extra is not installed (missing {', '.join(MISSING)}): "
                                             "pip install -e '.[docs]'; .ci/docs runs this test"),
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium / chromium-browser / google-chrome on PATH"),
]
SAMPLED_MODULE_PAGES = ("api/methods/textspan/algorithm/", "api/model/hooked_vit/", "api/loading/")
SEARCHED = "text_span"  # a function of vit_lens_clip.methods.textspan.algorithm
QUIET_MKDOCS = {"DISABLE_MKDOCS_2_WARNING": "true", "NO_MKDOCS_2_WARNING": "1"}


class _DevTools:
    """Just enough of a WebSocket client (RFC 6455: text frames, masked from the client) for the DevTools protocol."""

    def __init__(self, ws_url: str, timeout: float = 60.0) -> None:
        url = urllib.parse.urlparse(ws_url)
        self.sock = socket.create_connection((url.hostname, url.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {url.path} HTTP/1.1\r\nHost: {url.hostname}:{url.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            assert chunk, "DevTools closed the connection during the handshake"
            head += chunk
        assert b" 101 " in head.split(b"\r\n", 1)[0], head
        self.last_id = 0
        self.events: list[dict] = []

    def close(self) -> None:
        self.sock.close()

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            data += chunk
        return data

    def _send(self, text: str, opcode: int = 0x1) -> None:
        data, mask = text.encode(), os.urandom(4)
        n = len(data)
        length = bytes([0x80 | n]) if n < 126 else (bytes([0x80 | 126]) + struct.pack(">H", n) if n < 1 << 16
                                                    else bytes([0x80 | 127]) + struct.pack(">Q", n))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(bytes([0x80 | opcode]) + length + mask + masked)

    def _receive(self) -> dict:
        message = b""
        while True:
            first, second = self._exactly(2)
            n = second & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exactly(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exactly(8))[0]
            payload = self._exactly(n)
            opcode = first & 0x0F
            if opcode == 0x8:
                raise ConnectionError("DevTools closed the connection")
            if opcode == 0x9:  # ping
                self._send(payload.decode(), opcode=0xA)
                continue
            message += payload
            if first & 0x80:
                return json.loads(message)

    def call(self, method: str, **params) -> dict:
        self.last_id += 1
        self._send(json.dumps({"id": self.last_id, "method": method, "params": params}))
        while True:
            message = self._receive()
            if message.get("id") == self.last_id:
                assert "error" not in message, (method, message["error"])
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def wait_for(self, method: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, event in enumerate(self.events):
                if event["method"] == method:
                    return self.events.pop(i)
            message = self._receive()
            if "method" in message:
                self.events.append(message)
        raise TimeoutError(f"no {method} within {timeout} s")

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")


def _console_errors(events: list[dict]) -> list[str]:
    errors = []
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            errors.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append("console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            errors.append(f"log: {params['entry']['text']} ({params['entry'].get('url', '')})")
    return errors


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
    folder = tmp_path_factory.mktemp("chromium")
    log = folder / "stderr.txt"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={folder / 'profile'}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline, port = time.monotonic() + 60, None
        while port is None and time.monotonic() < deadline and process.poll() is None:
            found = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", log.read_text(errors="replace"))
            port = found and found.group(1)
            time.sleep(0.2)
        assert port, log.read_text(errors="replace")[-3000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as answer:
            pages = [t for t in json.load(answer) if t["type"] == "page"]
        devtools = _DevTools(pages[0]["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log"):
            devtools.call(f"{domain}.enable")
        yield devtools
        devtools.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _open(browser: _DevTools, url: str) -> list[str]:
    """Load url; return the console errors seen while it loads and for a moment after."""
    browser.events.clear()
    browser.call("Page.navigate", url=url)
    browser.wait_for("Page.loadEventFired", timeout=60)
    assert browser.evaluate("document.readyState") == "complete"
    time.sleep(0.3)
    browser.evaluate("0")  # collects the events that arrived meanwhile
    return _console_errors(browser.events)


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


def test_docs_pages_load_without_console_errors(site, base_url, browser):
    pages = _pages(site)
    assert {"", "getting-started/", "demos/01_quickstart/", "api/", "api/model/hooked_vit/"} <= set(pages), pages
    failures = {}
    for page in pages:
        errors = _open(browser, base_url + page)
        title = browser.evaluate("document.title")
        if errors or not title:
            failures[page] = errors or ["no title"]
    assert not failures, failures


def test_docs_search_finds_a_function(site, base_url, browser):
    assert not _open(browser, f"{base_url}?q={SEARCHED}")
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
