"""methods/neurons/study.py: run_study on a tiny random CLIP with given reference and evaluation images. The
reference set fixes the means and thresholds, the evaluation set is what selectivity and accuracy are measured
on; the baseline accuracy is the model's own zero-shot accuracy; the result's fields and summary agree; and
shapes_images renders labelled, deterministic model inputs."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_clip

from vit_lens_clip import HookedViT
from vit_lens_clip.datasets.shapes_adapters import shapes_images
from vit_lens_clip.datasets.shapes_world import zero_shot_labels
from vit_lens_clip.loading import LoadedCLIP
from vit_lens_clip.methods.neurons.ablation import SETTINGS
from vit_lens_clip.methods.neurons.study import LayerResult, run_study
from vit_lens_clip.methods.zeroshot import build_classifier

TASK = "shape"
TOP = 0.25
N_REF, N_EVAL = 16, 12
LAYERS = [1, 0]
TEXTS = ["a red circle", "a blue square", "a green triangle", "a photo", "a shape", "a yellow star"]


@pytest.fixture(scope="module")
def loaded() -> LoadedCLIP:
    clip = tiny_clip(seed=5, layers=3)  # neurons of layers 0 and 1 are read by later attention
    return LoadedCLIP(model=HookedViT.from_open_clip(clip), clip=clip,
                      tokenizer=open_clip.SimpleTokenizer(context_length=16),
                      preprocess=open_clip.image_transform(32, is_train=False), name="tiny", pretrained=None,
                      key="tiny-study")


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n_classes = len(zero_shot_labels(TASK)[0])
    labels = torch.arange(n) % n_classes
    labels[-1] = -1  # an unlabelled image: measured, but left out of the accuracies
    return torch.randn(n, 3, 32, 32, generator=g), labels


@pytest.fixture(scope="module")
def result(loaded):
    return run_study(loaded, LAYERS, data(N_REF, 1), data(N_EVAL, 2), *zero_shot_labels(TASK), task=TASK,
                     texts=TEXTS, n_texts=2, top_fraction=TOP, batch_size=16, progress=False)


def test_the_study_records_its_inputs(result):
    assert sorted(result.layers) == sorted(LAYERS) and all(isinstance(r, LayerResult) for r in result.layers.values())
    assert result.layers[1].layer == 1
    assert (result.n_reference, result.n_eval) == (N_REF, N_EVAL)
    assert result.task == TASK and result.classnames == list(zero_shot_labels(TASK)[0])
    assert result.texts == TEXTS
    assert torch.equal(result.eval_images, data(N_EVAL, 2)[0])
    assert torch.equal(result.reference_images, data(N_REF, 1)[0])
    assert set(result.bytes_per_image) == set(LAYERS) and all(b > 0 for b in result.bytes_per_image.values())


def test_baseline_accuracy_is_the_models_own_zero_shot_accuracy(loaded, result):
    x, labels = data(N_EVAL, 2)
    classifier = build_classifier(loaded, *zero_shot_labels(TASK))
    with torch.no_grad():
        predicted = (F.normalize(loaded.model(x), dim=-1) @ classifier).argmax(-1)
    keep = labels >= 0
    expected = (predicted[keep] == labels[keep]).float().mean().item()
    for layer in result.layers.values():
        assert set(layer.accuracy) == set(SETTINGS)  # texts given: every setting, the text one included
        assert layer.accuracy["baseline"] == pytest.approx(expected, abs=1e-6)
        assert all(0 <= a <= 1 for a in layer.accuracy.values())


def test_selectivity_is_measured_on_the_evaluation_images_against_the_reference_thresholds(result):
    for layer in result.layers.values():
        n_neurons = layer.threshold.shape[0]
        assert layer.eval_norms.shape == (N_EVAL, n_neurons)
        assert torch.equal(layer.selectivity_eval, (layer.eval_norms > layer.threshold).float().mean(0))
        assert layer.mean.shape == layer.directions.shape == (n_neurons, 48)  # tiny_clip: embed_dim 48
        assert torch.allclose(layer.directions.norm(dim=-1), torch.ones(n_neurons), atol=1e-4)


def test_evaluating_on_the_reference_images_gives_the_threshold_quantile(loaded):
    """τ_n is the k-th largest norm over the reference images (strict >): on those same images every neuron is
    significant on exactly k − 1 of them. On other images this would not hold."""
    same = run_study(loaded, [0], data(N_REF, 1), data(N_REF, 1), *zero_shot_labels(TASK), task=TASK,
                     top_fraction=TOP, batch_size=16, progress=False)  # one layer, no texts: the cheap part
    assert set(same.layers[0].accuracy) == set(SETTINGS) - {"text"}  # no texts, no text ablation
    k = max(1, round(TOP * N_REF))
    for layer in same.layers.values():
        assert torch.allclose(layer.selectivity_eval, torch.full_like(layer.selectivity_eval, (k - 1) / N_REF))


def test_variances_text_code_and_summary(result):
    for layer in result.layers.values():
        assert 0 <= layer.variance_explained_pooled <= 1 + 1e-6
        assert bool(((layer.variance_explained >= -1e-6) & (layer.variance_explained <= 1 + 1e-6)).all())
        assert layer.code is not None and 0 <= layer.text_variance_explained <= 1 + 1e-6
        assert layer.effect_size > 0
        summary = layer.summary()
        assert summary["selectivity_mean"] == pytest.approx(layer.selectivity_eval.mean().item())
        assert summary["variance_explained_pooled"] == layer.variance_explained_pooled
        assert summary["text_variance_explained_pooled"] == layer.text_variance_explained
        assert {f"acc_{s}" for s in SETTINGS} <= set(summary)
        assert all(isinstance(v, float) for v in summary.values())


def test_shapes_images_are_labelled_deterministic_model_inputs(loaded):
    x, labels = shapes_images(loaded.preprocess, 3, seed=7, task=TASK)
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    n_classes = len(zero_shot_labels(TASK)[0])
    assert bool(((labels >= -1) & (labels < n_classes)).all())
    again, labels_again = shapes_images(loaded.preprocess, 3, seed=7, task=TASK)
    assert torch.equal(x, again) and torch.equal(labels, labels_again)
    other, _ = shapes_images(loaded.preprocess, 3, seed=8, task=TASK)
    assert not torch.equal(x, other)


def test_one_evaluation_pass_equals_the_separate_passes():
    """evaluate_layer forms each batch's effects once and gives exactly what the three streaming functions give."""
    from vit_lens_clip.methods.neurons.ablation import ablated_embeddings, significance_threshold
    from vit_lens_clip.methods.neurons.directions import neuron_directions, variance_explained
    from vit_lens_clip.methods.neurons.effects import NeuronEffects, collect_second_order
    from vit_lens_clip.methods.neurons.study import evaluate_layer

    model = HookedViT.from_open_clip(tiny_clip(seed=21)).eval()
    x = torch.randn(11, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    fx = NeuronEffects(model, collect_second_order(model, x, 0))
    mean = fx.mean()
    norms = fx.centred_norms(mean, batch_size=4)
    threshold = significance_threshold(norms, 0.2)
    directions = neuron_directions(fx, mean, norms, top_k=3).directions
    text = directions + 0.3 * torch.randn(directions.shape, generator=torch.Generator().manual_seed(3))
    got = evaluate_layer(fx, mean, threshold, directions, text, batch_size=4)
    assert torch.equal(got.norms, norms)
    ve, pooled = variance_explained(fx, mean, directions, batch_size=4)
    assert torch.equal(got.variance_explained[0], ve) and got.variance_explained[1] == pooled
    assert got.text_variance_explained == variance_explained(fx, mean, torch.nn.functional.normalize(text, dim=-1), 4)[1]
    separate = ablated_embeddings(fx, mean, threshold, directions, text, batch_size=4)
    assert separate.keys() == got.ablated.keys() and all(torch.equal(got.ablated[k], v) for k, v in separate.items())
    assert not torch.equal(got.ablated["all"], got.ablated["baseline"])
