"""``vit-lens-clip explore DIR --out SITE --serve [PORT]``: the explorer's live mode, on Python's own
``http.server`` (no web framework: the site is static files plus two small JSON/PNG endpoints, which the
standard library serves well on one machine; Dash or Flask would add a dependency and a second page model).

- ``GET /api/search?q=TEXT``: the text embedded by the model's text tower, units ranked by the cosine of that
  embedding with their direct effect (``viz.explorer.rank_units``): the first ten as JSON
  ``[{name, kind, page, cosine, examples}]``;
- ``POST /api/map?unit=NAME`` with an image file as the body: PNG of [image | the unit's map over it]
  (``ExploreContext.unit_map``: a head's ``joint_map`` of its direction, or the activation of a neuron, feature
  or hook unit at every patch), the image passed through the model's own preprocess;
- ``GET /live.js``: ``window.EXPLORER_LIVE = true`` (the static file says false), which switches the pages'
  search and their image drop box to the endpoints above; every other path is a file of the site.

It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import io
import json
import threading
import urllib.parse
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vit_lens_clip.app.explore import ExploreContext, _display, build_explore_command
from vit_lens_clip.errors import BadInputError
from vit_lens_clip.viz.explorer import overlay_png, rank_units

__all__ = ["make_server", "run_explore_command", "serve"]

MAX_UPLOAD = 32 * 2**20  # bytes of a dropped image


class _Handler(SimpleHTTPRequestHandler):
    context: ExploreContext
    lock: threading.Lock  # one model call at a time

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        pass

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._send(status, json.dumps({"error": message}).encode(), "application/json")

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        url = urllib.parse.urlparse(self.path)
        if url.path == "/favicon.ico":  # the site has none; an empty answer keeps the console clean
            return self._send(200, b"", "image/x-icon")
        if url.path == "/live.js":
            return self._send(200, b"window.EXPLORER_LIVE = true;\n", "text/javascript")
        if url.path == "/api/search":
            query = urllib.parse.parse_qs(url.query).get("q", [""])[0].strip()
            if not query:
                return self._error(400, "empty query")
            data = self.context.data
            with self.lock:
                embedding = self.context.loaded.encode_text([query])[0].float().cpu()
            found = []
            pages = {v.name: v for v in data.units}
            for name, cosine in rank_units(data, embedding)[:10]:
                view = pages[name]
                found.append({"name": name, "kind": view.kind, "page": view.page, "cosine": cosine,
                              "examples": [i for i, _ in view.examples[:8]]})
            return self._send(200, json.dumps(found).encode(), "application/json")
        return super().do_GET()

    def do_POST(self) -> None:  # noqa: N802
        url = urllib.parse.urlparse(self.path)
        if url.path != "/api/map":
            return self._error(404, "no such endpoint")
        unit = urllib.parse.parse_qs(url.query).get("unit", [""])[0]
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_UPLOAD:
            return self._error(400, f"send an image of at most {MAX_UPLOAD} bytes as the body")
        try:
            picture = Image.open(io.BytesIO(self.rfile.read(length))).convert("RGB")
        except (UnidentifiedImageError, OSError):
            return self._error(400, "the body is not an image")
        loaded = self.context.loaded
        image = loaded.preprocess(picture)
        try:
            with self.lock:
                patch_map = self.context.unit_map(unit, image)
        except BadInputError as e:
            return self._error(404, str(e))
        return self._send(200, overlay_png(_display(loaded.preprocess, image.float()), patch_map), "image/png")


def make_server(context: ExploreContext, site: str | Path, port: int = 0) -> ThreadingHTTPServer:
    """The live server of a built site on 127.0.0.1:``port`` (0: a free port; see ``server.server_address``)."""
    handler = type("ExplorerHandler", (_Handler,), {"context": context, "lock": threading.Lock()})
    return ThreadingHTTPServer(("127.0.0.1", port), partial(handler, directory=str(site)))


def serve(context: ExploreContext, site: str | Path, port: int, quiet: bool = False) -> None:
    """Serve until Ctrl-C."""
    server = make_server(context, site, port)
    if not quiet:
        print(f"live explorer on http://127.0.0.1:{server.server_address[1]}/index.html (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def run_explore_command(args: argparse.Namespace) -> Path:
    """``vit-lens-clip explore``: build the site; with ``--serve``, then serve it live until Ctrl-C."""
    out, context = build_explore_command(args)
    if args.serve is not None:
        serve(context, out, args.serve, quiet=args.quiet)
    return out
