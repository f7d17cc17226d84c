"""app/benchmarks/suites.py and heatmaps.py on tiny sizes: the perturbed model moved its 1-d parameters, the
batched TextSpan rows agree with the per-head loop, the direct second-order statistic has its documented shape,
and every registered heatmap method is timed against a forward."""

import warnings

import open_clip
import torch
from conftest import tiny_clip

from vit_lens_clip.app.benchmarks import heatmaps
from vit_lens_clip.app.benchmarks.heatmaps import bench_heatmaps
from vit_lens_clip.app.benchmarks.suites import (
    PUBLISHED_LOOP,
    REFERENCE_LOOP,
    perturbed_open_clip,
    second_order_direct,
    textspan_rows,
)
from vit_lens_clip.model.hooked_vit import HookedViT


def test_perturbed_open_clip_moves_only_1d_parameters(monkeypatch):
    tiny = tiny_clip(seed=14)
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    monkeypatch.setattr(open_clip, "create_model", lambda arch, pretrained=None: tiny)
    model = perturbed_open_clip("tiny", torch.device("cpu"), seed=1)
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, state[k])}
    ones = {k for k, v in state.items() if v.ndim == 1 and not k.startswith("logit")}
    assert moved and moved <= ones and "visual.conv1.weight" not in moved


def test_textspan_rows_agree_with_the_loop():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one repeat: the timing warning
        rows = textspan_rows(n_heads=2, n_images=12, n_texts=20, d_out=6, k=3, rank=5, repeats=1)
    assert [row.name for row in rows[:2]] == [PUBLISHED_LOOP, REFERENCE_LOOP] and len(rows) == 4
    assert all(row.baseline == PUBLISHED_LOOP for row in rows)  # every ratio is against the released code's loop
    for row in rows:
        assert row.agreement is not None and row.agreement < 1e-3, row.name
    for row in rows[2:]:  # the batched rows say how many heads pick as each loop does
        assert row.extra["picks_identical"] == 2 and row.extra["picks_as_published_loop"] == 2, row.note
    assert all(row.peak_bytes > 0 for row in rows)


def test_second_order_direct_shape():
    hooked = HookedViT.from_open_clip(tiny_clip(seed=15))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    s = second_order_direct(hooked, x, layer=0, later=2)
    assert s.shape == (2, 4, 256) and s.dtype == torch.float64 and s.abs().sum() > 0


def test_bench_heatmaps_times_every_registered_method(monkeypatch):
    hooked = HookedViT.from_open_clip(tiny_clip(seed=16))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    texts = torch.nn.functional.normalize(torch.randn(2, 48, generator=torch.Generator().manual_seed(1)), dim=-1)
    seen = []

    class Recorded:  # a method registered late: timed through the registry's one call signature
        def compute(self, model, images, classifier, labels):
            seen.append((classifier.shape, labels.tolist()))
            return torch.zeros(images.shape[0], *model.cfg.grid_size)

    monkeypatch.setattr(heatmaps, "MAP_METHODS", {"recorded": Recorded()})
    result = bench_heatmaps(hooked, x, texts, repeats=2, verbose=False)
    assert set(result) == {"forward", "recorded"}
    assert seen == [((48, 2), [0, 0, 0])] * 3  # one warm-up and two timed calls, every image as class 0
    assert result["forward"]["ratio"] == 1.0 and all(v["seconds"] > 0 for v in result.values())
    assert result["recorded"]["ratio"] == result["recorded"]["seconds"] / result["forward"]["seconds"]
