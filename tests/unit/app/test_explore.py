"""The explore command: its options, the datasets a collection folder's fingerprint reopens, and a user-defined
unit's page."""

from __future__ import annotations

import argparse

import pytest
import torch
from conftest import type_checks_off

from vit_lens_clip.app.cli import build_parser
from vit_lens_clip.app.explore import _queries, build_site_data, reopen_dataset, residual_direct_effect
from vit_lens_clip.app.explore_options import add_explore_arguments
from vit_lens_clip.datasets.sources import ShapesItems
from vit_lens_clip.distributed.collection import CollectionPlan, collect_on_rank
from vit_lens_clip.loading import load_clip
from vit_lens_clip.methods.examples import HookUnit, TopExamples


def test_explore_is_a_command_with_its_options():
    args = build_parser().parse_args(["explore", "folder", "--out", "site", "--examples", "4"])
    assert (args.source, args.out, args.examples, args.textspan_k, args.pool) == ("folder", "site", 4, 3, "descriptions")
    assert not args.bottom and build_parser().parse_args(["explore", "folder", "--out", "site", "--bottom"]).bottom
    assert args.serve is None
    assert build_parser().parse_args(["explore", "folder", "--out", "site", "--serve"]).serve == 8765
    assert build_parser().parse_args(["explore", "folder", "--out", "site", "--serve", "9001"]).serve == 9001
    parser = argparse.ArgumentParser()
    add_explore_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["folder", "--out", "site", "--examples", "0"])
    with pytest.raises(SystemExit):
        parser.parse_args(["folder", "--out", "site", "--serve", "70000"])


def test_reopen_dataset_rerenders_shapes_and_rereads_folders(tmp_path):
    def identity(x):
        return x

    shapes = reopen_dataset("shapes:n=5,seed=3", identity)
    assert len(shapes) == 5 and shapes.seed == 3
    assert reopen_dataset("wds:n=3:abc", identity) is None
    assert reopen_dataset(f"folder:{tmp_path / 'gone'}:n=1:abcd", identity) is None


def test_queries_come_from_a_list_or_a_file(tmp_path):
    assert _queries(None) == [] and _queries("a red thing; ;two cats") == ["a red thing", "two cats"]
    (tmp_path / "q.txt").write_text("vermilion\n\n  a vermilion disc \n")
    assert _queries(str(tmp_path / "q.txt")) == ["vermilion", "a vermilion disc"]


def test_a_user_defined_hook_unit_gets_a_page_with_maps_and_its_residual_direct_effect(tmp_path):
    """A hook along a direction, collected from Python (``collect_on_rank(examples=TopExamples(...))``), is paged
    under units/ with the examples of the collection, a map per example (the hook's output along the direction at
    each patch) and the direct effect (γ ⊙ (d − mean d))·P of a residual-stream write; an SAE-free, neuron-free
    folder still gets its head pages."""
    loaded = load_clip()
    torch.manual_seed(0)
    direction = torch.randn(loaded.model.cfg.d_model)
    units = [HookUnit("blocks.4.hook_resid_post", direction, 0, "mine")]
    plan = CollectionPlan(layers=(4, 5), batch_size=6, examples=3, example_units="mine")
    folder = tmp_path / "coll"
    (tmp_path / "pool.txt").write_text("a red circle\na blue star\na green square")
    context = []
    with type_checks_off():  # the model's forwards: checked by their own tests
        collect_on_rank(loaded.model, ShapesItems(12, loaded.preprocess), folder, plan,
                        {"model": loaded.key, "load": [loaded.name, None, "fp32"], "dataset": "shapes:n=12,seed=0"},
                        progress=False, examples=TopExamples(units, 3))
        data = build_site_data(folder, loaded=loaded, examples=3, textspan_k=0, pool_name=str(tmp_path / "pool.txt"),
                               units=units, context=context)
    view = next(v for v in data.units if v.name == "mine")
    assert view.kind == "unit" and view.page == "units/mine.html" and len(view.examples) == 3
    _, cache = loaded.model.run_with_cache(torch.stack([ShapesItems(12, loaded.preprocess)[i]["image"] for i in range(12)]))
    scores = cache["blocks.4.hook_resid_post"][:, 0] @ direction
    assert [i for i, _ in view.examples] == scores.argsort(descending=True)[:3].tolist()
    assert all(png is not None for png in view.maps)
    effect = residual_direct_effect(loaded.model, direction[None])[0]
    assert view.effect_norm == pytest.approx(float(effect.norm()), rel=1e-5)
    patch = context[0].unit_map("mine", ShapesItems(12, loaded.preprocess)[view.examples[0][0]]["image"])
    torch.testing.assert_close(patch.flatten(), (cache["blocks.4.hook_resid_post"][view.examples[0][0], 1:] @ direction),
                               rtol=1e-4, atol=1e-4)
    assert sum(v.kind == "head" for v in data.units) == 8 and data.units[-1].name == "mine"
