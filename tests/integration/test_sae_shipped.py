"""The SAE shipped with the embedded model: it loads offline, its recorded figures are consistent with a
re-measurement, and the report section explains its features end to end."""

from __future__ import annotations

import pytest
import torch

from vit_lens_clip.app.report_output import ReportOutput
from vit_lens_clip.app.sae import add_sae_features
from vit_lens_clip.app.shipped_sae import EVAL_SEED, attribute_labels, build_parser, factor_markdown, factor_summary
from vit_lens_clip.datasets.shapes_adapters import sample_scenes, scene_images
from vit_lens_clip.datasets.shapes_world import zero_shot_labels
from vit_lens_clip.loading import load_clip
from vit_lens_clip.methods.sae import explain
from vit_lens_clip.methods.sae.shipped import (
    SHIPPED_SAE_HOOK,
    load_shipped_sae,
    shipped_figures,
)
from vit_lens_clip.methods.sae.splice import check_compatible
from vit_lens_clip.methods.sae.train import collect_activations, reconstruction_figures, zero_shot_with_sae
from vit_lens_clip.methods.zeroshot import build_classifier, logits
from vit_lens_clip.viz.html import Markdown


@pytest.fixture(scope="module")
def loaded():
    return load_clip("vit-lens-clip/shapes")


@pytest.fixture(scope="module")
def world():
    return sample_scenes(24, EVAL_SEED + 7)


def test_shipped_sae_loads_and_matches_its_figures(loaded, world):
    sae = load_shipped_sae()
    assert sae.cfg.hook_name == SHIPPED_SAE_HOOK and sae.cfg.d_in == loaded.model.cfg.d_model
    check_compatible(loaded.model, sae)
    figures = shipped_figures()
    assert set(figures["zero_shot"]) >= {"colour", "shape", "position", "place", "count", "size"}
    acts = collect_activations(loaded.model, scene_images(loaded.preprocess, world), SHIPPED_SAE_HOOK, progress=False)
    again = reconstruction_figures(sae, acts.flatten(0, 1))
    assert again["l0"] == pytest.approx(sae.cfg.k, abs=0.5)  # TopK: k features per token (fewer if ≤ 0)
    assert abs(again["explained_variance"] - figures["explained_variance"]) < 0.05


def test_report_section_explains_features(loaded, world):
    out = ReportOutput()
    add_sae_features(out, loaded, world, n_features=2, n_top_images=2, ablation_images=8, segmentation_images=4,
                     batch_size=16, progress=False)
    titles = [t for t, _ in out.page]
    assert len(titles) == 4 and isinstance(out.page[0][1], Markdown)
    numbers = out.numbers["sae"]
    assert len(numbers["per_feature"]) == 2
    row = numbers["per_feature"][0]
    assert len(row["nearest_texts"]) == 3 and len(row["top_heads"]) == 3 and 0.5 <= row["best_factor"]["auroc"] <= 1
    assert set(numbers["segmentation"]) == {"decomposition", "sae_features", "sae_top_feature"}
    # CSV rows: one AUROC per explained feature, then three metrics per segmentation map
    assert [r["metric"] for r in out.csv_rows[:2]] == [f"feature{j}.auroc" for j in numbers["features"]]
    assert len(out.csv_rows) == 2 + 3 * 3 and all(r["section"] == "sae" for r in out.csv_rows)
    acts = explain.feature_activations(loaded.model, load_shipped_sae(), scene_images(loaded.preprocess, world))
    summary = factor_summary(acts, world)
    assert summary["n_alive"] > 0 and len(summary["per_feature"]) == summary["n_alive"]
    assert torch.isfinite(torch.tensor([r["auroc"] for r in summary["per_feature"]])).all()
    assert all(f"| {a} |" in factor_markdown(summary) for a in ("colour", "shape", "position", "place", "count"))


@torch.no_grad()
def test_zero_shot_with_sae_scores_the_callers_tasks(loaded, world):
    images = scene_images(loaded.preprocess, world)
    labels = attribute_labels(world, ("colour", "shape"))
    classes = {a: zero_shot_labels(a) for a in labels}
    table = zero_shot_with_sae(loaded, load_shipped_sae(), images, labels, classes)
    assert set(table) == {"colour", "shape"}
    assert table["shape"]["n"] == sum(label is not None for label in labels["shape"]) and table["colour"]["n"] == 24
    assert all(0 <= row[k] <= 1 for row in table.values() for k in ("plain", "sae"))
    # the plain column is the model's own zero-shot accuracy (oracle: logits of the unspliced model)
    classifier = build_classifier(loaded, *classes["colour"])
    expected = (logits(loaded.model(images), classifier).argmax(-1) == torch.tensor(labels["colour"])).float().mean()
    assert table["colour"]["plain"] == pytest.approx(float(expected))


def test_shipped_sae_script_parses_both_actions():
    args = build_parser().parse_args(["train", "--out", "x", "--k", "8"])
    assert (args.action, args.k, args.d_sae, args.run.__name__) == ("train", 8, 1024, "train")
    args = build_parser().parse_args(["factors", "--images", "5"])
    assert (args.action, args.images, args.threshold, args.run.__name__) == ("factors", 5, 0.9, "factors")
