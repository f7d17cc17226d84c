"""app/collect.py: the collect command's options become a CollectionPlan (unknown parts refused, one line), and
TextSpan over a collection folder equals TextSpan over the same heads in memory, head by head."""

import argparse

import pytest
import torch
from conftest import tiny_clip

from vit_lens_clip.app.cli import build_parser
from vit_lens_clip.app.collect import example_units, plan_from_args, textspan_from_collection
from vit_lens_clip.decompose.parts import decompose
from vit_lens_clip.distributed.collection import CollectionPlan, collect_on_rank
from vit_lens_clip.errors import BadInputError
from vit_lens_clip.loading import load_clip
from vit_lens_clip.methods.textspan.algorithm import text_span
from vit_lens_clip.model.hooked_vit import HookedViT


def _args(*extra):
    return build_parser().parse_args(["collect", "--data", "shapes:4", "--out", "o", *extra])


def test_plan_from_the_command_line():
    plan = plan_from_args(_args("--parts", "heads,embed,means", "--last-layers", "2"), n_layers=5, on_cuda=False)
    assert isinstance(plan, CollectionPlan)
    assert plan.parts == ("heads", "embed", "means") and plan.layers == (3, 4)
    assert plan_from_args(_args(), n_layers=5, on_cuda=True).pin_memory  # pinned memory on CUDA
    with pytest.raises(ValueError, match="unknown parts") as caught:
        plan_from_args(argparse.Namespace(**{**vars(_args()), "parts": "heads,nope"}), 5, False)
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="needs --texts"):
        plan_from_args(argparse.Namespace(**{**vars(_args()), "parts": "scores", "texts": None}), 5, False)


class _Images(torch.utils.data.Dataset):
    def __init__(self):
        self.images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"index": i, "name": str(i), "image": self.images[i]}


def test_textspan_from_a_folder_equals_textspan_in_memory(tmp_path):
    model = HookedViT.from_open_clip(tiny_clip(seed=17))
    data = _Images()
    plan = CollectionPlan(parts=("heads",), layers=(2,), batch_size=4, normalize=False)
    collect_on_rank(model, data, tmp_path, plan, {"model": "tiny", "dataset": "six"}, progress=False)
    texts = torch.nn.functional.normalize(torch.randn(10, 48, generator=torch.Generator().manual_seed(4)), dim=-1)
    pool = [f"t{i}" for i in range(10)]
    table = textspan_from_collection(tmp_path, texts, pool, k=3, rank=5)
    heads = decompose(model, data.images, layers=[2]).heads  # [n, 1, H, d]
    expected = text_span(heads[:, 0].transpose(0, 1).contiguous(), texts, k=3, rank=5, texts=pool)
    rows = table.rows
    assert table.pool == pool
    assert sorted(rows) == [(2, h) for h in range(4)]
    for h in range(4):
        assert list(rows[(2, h)].indices) == list(expected[h].indices)


def test_example_units_from_the_command_line():
    """--example-units: every kept head, every neuron of the named layers (hook_post itself), the shipped SAE's
    features (encoded by the SAE); anything else refused in one line."""
    model = load_clip().model
    units = example_units(model, "heads,neurons:3:-2,sae", [4, 5])
    assert [u.name for u in units[:8]] == [f"L{l}H{h}" for l in (4, 5) for h in range(4)]
    neurons = units[8:10]
    assert [u.hook for u in neurons] == ["blocks.3.mlp.hook_post", "blocks.4.mlp.hook_post"] and neurons[0].encode is None
    assert neurons[1].names[:2] == ("L4N0", "L4N1") and len(neurons[1].names) == model.cfg.d_mlp
    sae = units[10]
    assert sae.hook == "blocks.4.hook_resid_post" and len(sae.names) == 1024 and sae.source is not None
    x = torch.randn(2, 5, model.cfg.d_model)
    torch.testing.assert_close(sae.scores(x), sae.source.encode(x).amax(1))
    for spec, message in (("bogus", "unknown unit kind"), ("neurons:9", "outside the model"), ("neurons:", "name the layers"),
                          ("neurons:a", "layer numbers"), ("", "names no units")):
        with pytest.raises(BadInputError, match=message) as e:
            example_units(model, spec, [4, 5])
        assert "\n" not in str(e.value)
    args = build_parser().parse_args(["collect", "--data", "shapes:4", "--out", "x", "--examples", "3",
                                      "--example-units", "sae"])
    plan = plan_from_args(args, 6, False)
    assert (plan.examples, plan.example_units) == (3, "sae") and plan.identity()["examples"] == 3
    assert "examples" not in plan_from_args(build_parser().parse_args(["collect", "--data", "s", "--out", "x"]), 6,
                                            False).identity()  # folders collected without examples keep their identity
