"""app/provenance.py: the weights digest follows the weights (same weights, same digest; one changed value, another
digest), the command line is quoted, and the Markdown list carries every field."""

import copy
import json

import torch
from conftest import tiny_clip

from vit_lens_clip.app.provenance import PACKAGES, provenance_markdown, report_provenance
from vit_lens_clip.loading import LoadedCLIP
from vit_lens_clip.model.hooked_vit import HookedViT


def _loaded(model):
    return LoadedCLIP(model=model, clip=torch.nn.Identity(), tokenizer=None, preprocess=lambda x: x, name="tiny",
                      pretrained=None, key="tiny|x|fp32")


def test_digest_follows_the_weights():
    hooked = HookedViT.from_open_clip(tiny_clip(seed=13))
    a = report_provenance(_loaded(hooked), ["vit-lens-clip", "report", "--out", "my dir"])
    b = report_provenance(_loaded(copy.deepcopy(hooked)), [])
    assert a["model"]["weights_sha256"] == b["model"]["weights_sha256"] and len(a["model"]["weights_sha256"]) == 64
    changed = copy.deepcopy(hooked)
    with torch.no_grad():
        changed.W_proj[0, 0] += 1e-3
    assert report_provenance(_loaded(changed), [])["model"]["weights_sha256"] != a["model"]["weights_sha256"]
    assert a["command"] == "vit-lens-clip report --out 'my dir'"
    assert set(a["versions"]) == set(PACKAGES) and a["device"] and a["date_utc"].endswith("+00:00")
    json.dumps(a)  # results.json stores it as is


def test_markdown_lists_every_field():
    hooked = HookedViT.from_open_clip(tiny_clip(seed=13))
    provenance = report_provenance(_loaded(hooked), ["x", "y"])
    text = provenance_markdown(provenance)
    assert text.count("\n- ") == 4 and "pretrained: none" in text and provenance["model"]["weights_sha256"] in text
    assert "`x y`" in text and "torch" in text
