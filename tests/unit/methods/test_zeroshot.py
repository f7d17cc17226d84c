"""methods/zeroshot.py: the classifier is open_clip's template-averaged text embedding; logits are cosines;
accuracy counts top-k hits and refuses labels outside the classes."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_refused, tiny_clip

from vit_lens_clip.errors import BadInputError
from vit_lens_clip.methods.zeroshot import accuracy, build_classifier, logits


def _loaded():
    clip = tiny_clip(seed=9)

    def tokenizer(texts):
        out = torch.zeros(len(texts), 16, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [1 + (ord(c) % 300) for c in t][:15]
            out[i, : len(ids)] = torch.tensor(ids)
            out[i, len(ids)] = 49407
        return out

    return SimpleNamespace(clip=clip, tokenizer=tokenizer, device=torch.device("cpu"))


def test_classifier_averages_normalised_templates():
    loaded = _loaded()
    templates = ["a {}", "the {} here", "{}!"]
    weights = build_classifier(loaded, ["cat", "dog"], templates, classes_per_batch=1)
    assert weights.shape == (48, 2)
    callables = [lambda c: f"a {c}", lambda c: f"the {c} here", lambda c: f"{c}!"]
    assert torch.allclose(build_classifier(loaded, ["cat", "dog"], callables), weights, atol=1e-6)
    mixed = ["a {}", callables[1], "{}!"]  # the documented mix of format strings and callables
    assert torch.allclose(build_classifier(loaded, ["cat", "dog"], mixed), weights, atol=1e-6)
    with torch.no_grad():
        texts = [t.format("dog") for t in templates]
        e = F.normalize(loaded.clip.encode_text(loaded.tokenizer(texts)), dim=-1).mean(0)
    assert torch.allclose(weights[:, 1], F.normalize(e, dim=0), atol=1e-5)
    with pytest.raises(BadInputError, match="has no"):
        build_classifier(loaded, ["cat"], ["a photo"])
    with pytest.raises(BadInputError, match="must be a list"):
        build_classifier(loaded, "cat", ["a {}"])


def test_logits_and_accuracy():
    classifier = torch.eye(3)
    emb = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    assert torch.allclose(logits(emb, classifier), F.normalize(emb, dim=-1))
    assert_refused(lambda: logits(emb, torch.eye(4)), "embeddings [batch, d] and classifier [d, n_classes] disagree: "
                   "got (2, 3) and (4, 4)", BadInputError)
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.3, 0.5], [0.1, 0.8, 0.3]])
    assert accuracy(scores, torch.tensor([0, 1, 0]), topk=(1, 2, 5)) == pytest.approx({"top1": 1 / 3, "top2": 2 / 3})
    with pytest.raises(BadInputError, match="must lie in 0..2"):
        accuracy(scores, torch.tensor([0, 1, 3]))
    assert_refused(lambda: accuracy(scores, torch.tensor([0.0, 1.0, 2.0])),
                   "labels must be integer class indices, got dtype torch.float32", BadInputError)
