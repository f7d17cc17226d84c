"""app/shipped_sae.py: attribute labels per scene, a feature that fires exactly on one factor value is found
aligned with AUROC 1 (dead features are left out), the Markdown table has one row per factor, and the command
line has its two actions."""

import pytest
import torch

from vit_lens_clip.app.shipped_sae import attribute_labels, build_parser, factor_markdown, factor_summary
from vit_lens_clip.datasets.shapes_adapters import sample_scenes
from vit_lens_clip.datasets.shapes_world import ATTRIBUTES, zero_shot_labels


@pytest.fixture(scope="module")
def scenes():
    return sample_scenes(40, seed=5)


def test_attribute_labels_index_the_zero_shot_names(scenes):
    labels = attribute_labels(scenes)
    assert set(labels) == set(ATTRIBUTES)
    names = zero_shot_labels("colour")[0]
    assert [names[v] for v in labels["colour"]] == [s.attributes.colour for s in scenes]


def test_a_feature_on_one_value_is_aligned(scenes):
    colour = scenes[0].attributes.colour
    on = torch.tensor([float(s.attributes.colour == colour) for s in scenes])
    g = torch.Generator().manual_seed(0)
    acts = torch.zeros(len(scenes), 3, 3)
    acts[:, 0, 0] = on * 2.0  # feature 0: the class token fires on that colour only
    acts[:, :, 2] = torch.rand(len(scenes), 3, generator=g)  # feature 2: noise; feature 1: dead
    summary = factor_summary(acts, scenes, threshold=0.9)
    assert summary["n_alive"] == 2
    best = {row["feature"]: row for row in summary["per_feature"]}
    assert set(best) == {0, 2}
    assert best[0]["attribute"] == "colour" and best[0]["value"] == colour and best[0]["auroc"] == pytest.approx(1.0)
    assert colour in summary["values_covered"]["colour"] and summary["per_attribute"].get("colour", 0) >= 1
    table = factor_markdown(summary)
    assert table.startswith(f"{summary['n_aligned']} of 2 live features") and table.count("\n| ") == 1 + len(ATTRIBUTES)
    n_colours = len(zero_shot_labels("colour")[0])
    assert f"| colour | 1 | 1 of {n_colours}: {colour} |" in table.splitlines()


def test_command_line_actions():
    parser = build_parser()
    assert parser.parse_args(["factors"]).images == 600
    assert parser.parse_args(["train", "--out", "o"]).hook == "blocks.4.hook_resid_post"
    with pytest.raises(SystemExit):
        parser.parse_args(["train"])  # --out is required
