"""Reducers stream, resume bitwise-identically and merge; mean-ablation post-hoc equals intervention."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import rel_err, tiny_clip
from PIL import Image
from safetensors.torch import load_file

from vit_lens_clip import HookedViT
from vit_lens_clip.datasets.folder import ImageFolder, TensorImages
from vit_lens_clip.decompose.manifests import merge_manifests
from vit_lens_clip.decompose.parts import decompose
from vit_lens_clip.decompose.reducers import (
    ActivationMeanReducer,
    MeanReducer,
    Reducer,
    TextScoreReducer,
    run_reducers,
)
from vit_lens_clip.decompose.store import StoredParts
from vit_lens_clip.decompose.store_writer import ShardWriter
from vit_lens_clip.errors import BadInputError
from vit_lens_clip.methods.ablation import ablate_posthoc, cumulative_layer_curve
from vit_lens_clip.methods.zeroshot import accuracy, logits

TOL = 1e-5


@pytest.fixture(scope="module")
def tiny():
    hooked = HookedViT.from_open_clip(tiny_clip())
    images = torch.randn(20, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return hooked, images


def test_mean_reducer_matches_full_batch_and_merges(tiny):
    hooked, images = tiny
    full = decompose(hooked, images, per_source=True)
    mean = MeanReducer(per_source=True)
    run_reducers(hooked, TensorImages(images), [mean], batch_size=6, progress=False)
    res = mean.result()
    assert rel_err(res["heads"], full.heads.mean(0)) <= TOL
    assert rel_err(res["head_sources"], full.head_sources.mean(0)) <= TOL
    assert rel_err(res["raw.pooled"], full.raw["pooled"].mean(0)) <= TOL
    # two processes' partial means merge exactly into the full mean
    a, b = MeanReducer(), MeanReducer()
    run_reducers(hooked, TensorImages(images[:7]), [a], batch_size=4, progress=False)
    run_reducers(hooked, TensorImages(images[7:]), [b], batch_size=4, progress=False)
    a.merge(b)
    assert a.count == 20
    assert rel_err(a.result()["attns"], full.attns.mean(0)) <= TOL


def test_means_record_their_scale_and_ablation_refuses_the_other(tiny):
    hooked, images = tiny
    plain = MeanReducer()
    run_reducers(hooked, TensorImages(images), [plain], batch_size=10, normalize=False, progress=False)
    assert plain.result()["normalized"].item() == 0.0
    unit = MeanReducer()
    unit.merge_from([plain.state_dict()])  # the flag travels through states (checkpoints, ranks)
    assert unit.normalized is False
    parts_unit = decompose(hooked, images, normalize=True)
    with pytest.raises(BadInputError, match="normalize=False but these parts have normalize=True"):
        ablate_posthoc(parts_unit, plain.result(), heads=[(0, 0)])
    with pytest.raises(BadInputError, match="both with and without normalize=True"):
        run_reducers(hooked, TensorImages(images[:4]), [plain], batch_size=4, normalize=True, progress=False)
    same = ablate_posthoc(decompose(hooked, images, normalize=False), plain.result(), heads=[(0, 0)])
    assert same.shape == (20, hooked.cfg.output_dim)


def test_activation_mean_reducer_is_a_reducer(tiny):
    """As a Reducer (its hooks passed as extra_hooks) it gives the same means as through activation_means=, and
    its states merge exactly like MeanReducer's; a run without its hooks says so instead of returning {}."""
    hooked, images = tiny
    name = "blocks.0.hook_attn_out"
    _, cache = hooked.run_with_cache(images, names_filter=[name])
    expected = cache[name].mean(0)
    via_param, as_reducer = ActivationMeanReducer([name]), ActivationMeanReducer([name])
    run_reducers(hooked, TensorImages(images), [], batch_size=6, activation_means=[via_param], progress=False)
    run_reducers(hooked, TensorImages(images), [as_reducer], batch_size=6, extra_hooks=as_reducer.hooks(),
                 progress=False)
    assert isinstance(as_reducer, Reducer)
    assert rel_err(via_param.result()[name], expected) <= TOL
    assert torch.equal(as_reducer.result()[name], via_param.result()[name])
    halves = [ActivationMeanReducer([name]), ActivationMeanReducer([name])]
    for half, part in zip(halves, (images[:7], images[7:])):
        run_reducers(hooked, TensorImages(part), [half], batch_size=4, extra_hooks=half.hooks(), progress=False)
    merged = ActivationMeanReducer([name])
    merged.merge_from([h.state_dict() for h in halves])
    assert merged.count == 20
    assert rel_err(merged.result()[name], expected) <= TOL
    with pytest.raises(ValueError) as caught:
        run_reducers(hooked, TensorImages(images), [ActivationMeanReducer([name])], batch_size=6, progress=False)
    assert str(caught.value) == ("ActivationMeanReducer's hooks did not run: pass reducer.hooks() to "
                                 "run_reducers(extra_hooks=...), or the reducer to activation_means=")


class _Kill(Reducer):
    def __init__(self, after):
        self.after, self.seen = after, 0

    def update(self, parts, batch):
        self.seen += 1
        if self.seen > self.after:
            raise KeyboardInterrupt("simulated kill")


def test_killed_run_resumes_bitwise_identically(tiny, tmp_path):
    hooked, images = tiny
    data = TensorImages(images, labels=list(range(20)))
    kw = dict(batch_size=3, layers=[-1, -2], checkpoint_every=2, progress=False)
    ref = ShardWriter(tmp_path / "ref", shard_size=5)
    run_reducers(hooked, data, [ref], checkpoint_dir=tmp_path / "ref_ckpt", **kw)
    ref.result()

    killed = ShardWriter(tmp_path / "run", shard_size=5)
    with pytest.raises(KeyboardInterrupt):
        run_reducers(hooked, data, [killed, _Kill(after=5)], checkpoint_dir=tmp_path / "ckpt", **kw)
    resumed = ShardWriter(tmp_path / "run", shard_size=5)
    summary = run_reducers(hooked, data, [resumed, _Kill(after=100)], checkpoint_dir=tmp_path / "ckpt", **kw)
    resumed.result()
    assert summary.resumed_from == 12  # the last checkpoint: 4 batches of 3
    m_ref = json.loads((tmp_path / "ref" / "manifest.json").read_text())
    m_run = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m_ref == m_run and m_run["complete"]
    for shard in m_ref["shards"]:
        a = load_file(str(tmp_path / "ref" / shard["file"]))
        b = load_file(str(tmp_path / "run" / shard["file"]))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    stack = StoredParts(tmp_path / "run").read()
    assert stack["heads"].shape == (20, 2, 4, 48)
    assert torch.equal(stack["indices"], torch.arange(20))
    direct = decompose(hooked, images, layers=[-1, -2])
    assert rel_err(stack["heads"], direct.heads) <= TOL


def test_manifests_merge(tiny, tmp_path):
    hooked, images = tiny
    for i, chunk in enumerate((images[:8], images[8:])):
        r = ShardWriter(tmp_path / f"rank{i}", shard_size=4)
        run_reducers(hooked, TensorImages(chunk), [r], batch_size=4, layers=[-1], progress=False)
        r.result()
    merged = StoredParts(merge_manifests([tmp_path / "rank0", tmp_path / "rank1"], tmp_path / "all")).read()
    assert merged["heads"].shape[0] == 20
    assert rel_err(merged["heads"], decompose(hooked, images, layers=[-1]).heads) <= TOL


def test_corrupt_images_skipped_and_listed(tiny, tmp_path):
    hooked, _ = tiny
    for i in range(5):
        Image.new("RGB", (40, 36), (i * 40, 10, 200)).save(tmp_path / f"img{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    from open_clip import image_transform

    data = ImageFolder(tmp_path, image_transform(32, is_train=False))
    texts = F.normalize(torch.randn(3, 48), dim=-1)
    scores = TextScoreReducer(texts)
    summary = run_reducers(hooked, data, [scores], batch_size=4, progress=False)
    assert summary.images == 5
    assert [name for name, _ in summary.skipped] == ["broken.png"]
    assert scores.result()["scores"].shape == (5, 3, 4, 3)


def test_posthoc_folded_and_curve(tiny):
    hooked, images = tiny
    parts = decompose(hooked, images)
    means = MeanReducer()
    run_reducers(hooked, TensorImages(images), [means], batch_size=10, progress=False)
    mu = means.result()
    ablated = ablate_posthoc(parts, mu, attn_layers=[0], mlp_layers=[1])
    expected = parts.total() - parts.attns[:, 0] + mu["attns"][0] - parts.mlps[:, 1] + mu["mlps"][1]
    assert rel_err(ablated, expected) <= TOL
    classifier = F.normalize(torch.randn(48, 5), dim=0)
    labels = logits(parts.embedding, classifier).argmax(-1)
    curve = cumulative_layer_curve(parts, mu, classifier, labels, kind="attn")
    assert curve[0] == (0, 1.0)  # nothing ablated: predictions are the labels
    assert len(curve) == hooked.cfg.n_layers + 1
    assert accuracy(torch.eye(3), torch.tensor([0, 1, 1]), topk=(1,))["top1"] == pytest.approx(2 / 3)
