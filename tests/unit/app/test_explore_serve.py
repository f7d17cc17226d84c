"""The live explorer's server: any text searched through the model's text tower, a unit's map of a posted image,
live.js switched on, the site's files served, and one-line JSON errors for bad requests."""

from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vit_lens_clip.app.explore import ExploreContext
from vit_lens_clip.app.explore_serve import make_server
from vit_lens_clip.errors import BadInputError
from vit_lens_clip.viz.explorer import SiteData, UnitView, write_site


class _Context(ExploreContext):
    """ExploreContext without a model: a 'text tower' that maps a text to a fixed direction, maps by unit name."""

    def __init__(self, data: SiteData, directions: dict[str, torch.Tensor]):
        self.data, self.calls = data, []
        self.loaded = SimpleNamespace(encode_text=lambda texts: torch.stack([directions[t] for t in texts]),
                                      preprocess=lambda picture: torch.rand(3, 16, 16))

    def unit_map(self, name: str, image: torch.Tensor) -> torch.Tensor:
        if name not in {v.name for v in self.data.units}:
            raise BadInputError(f"no unit {name!r} in this site")
        self.calls.append((name, tuple(image.shape)))
        return torch.arange(4.0).reshape(2, 2)


@pytest.fixture
def server(tmp_path):
    effects = F.normalize(torch.eye(4)[:3], dim=-1)
    units = [UnitView(name=n, kind=k, summary="", descriptions=[], nearest=[], examples=[(i, 1.0)])
             for i, (n, k) in enumerate([("L0H0", "head"), ("F7", "feature"), ("L1N3", "neuron")])]
    data = SiteData(title="t", n_images=3, layers=[0], n_heads=1, units=units, pool=["x"], pool_embeddings=torch.eye(4)[:1],
                    effects=effects, searchable=[0, 1, 2])
    site = write_site(data, tmp_path / "site")
    context = _Context(data, {"vermilion": torch.tensor([0.1, 0.2, 3.0, 0.0])})
    srv = make_server(context, site, 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", context
    srv.shutdown()
    srv.server_close()


def _get(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST" if data else "GET")) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_live_search_embeds_any_text_and_ranks_units_by_their_direct_effect(server):
    base, _ = server
    status, body = _get(base + "/api/search?q=vermilion")
    found = json.loads(body)
    assert status == 200 and [f["name"] for f in found] == ["L1N3", "F7", "L0H0"]
    assert found[0]["page"] == "neurons/L1N3.html" and found[0]["examples"] == [2]
    assert found[0]["cosine"] == pytest.approx(3.0 / float(torch.tensor([0.1, 0.2, 3.0]).norm()), rel=1e-6)
    assert _get(base + "/api/search?q=")[0] == 400
    assert _get(base + "/live.js")[1] == b"window.EXPLORER_LIVE = true;\n"
    assert b"EXPLORER_UNITS" in _get(base + "/units.js")[1] and _get(base + "/index.html")[0] == 200


def test_posted_image_gets_the_units_map_and_bad_posts_get_errors(server):
    base, context = server
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), "red").save(buffer, format="PNG")
    status, body = _get(base + "/api/map?unit=F7", buffer.getvalue())
    assert status == 200 and Image.open(io.BytesIO(body)).size == (2 * 256 + 4, 256)
    assert context.calls == [("F7", (3, 16, 16))]
    status, body = _get(base + "/api/map?unit=nope", buffer.getvalue())
    assert status == 404 and "no unit" in json.loads(body)["error"]
    assert _get(base + "/api/map?unit=F7", b"not an image")[0] == 400
