"""methods/neurons/ablation.py: thresholds, selectivity and concentration on known norms; the ablation settings
remove exactly the centred effects they name (tiny model, second-order effects collected)."""

import pytest
import torch
from conftest import tiny_clip

from vit_lens_clip.methods.neurons.ablation import (
    ablated_embeddings,
    ablation_accuracy,
    concentration,
    selectivity,
    significance_threshold,
)
from vit_lens_clip.methods.neurons.effects import NeuronEffects, collect_second_order
from vit_lens_clip.model.hooked_vit import HookedViT


def test_threshold_selectivity_concentration_on_known_norms():
    norms = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 1.0]])
    tau = significance_threshold(norms, top_fraction=0.5)  # k = 2: the second largest
    assert tau.tolist() == [3.0, 0.0]
    assert selectivity(norms, tau).tolist() == [0.25, 0.25]
    assert torch.allclose(concentration(norms, 0.5), torch.tensor([25 / 30, 1.0]))
    assert torch.allclose(concentration(torch.ones(10, 3), 0.2), torch.full((3,), 0.2))  # uniform: the fraction
    with pytest.raises(ValueError, match="top_fraction"):
        significance_threshold(norms, 1.0)


@pytest.fixture(scope="module")
def effects():
    hooked = HookedViT.from_open_clip(tiny_clip(seed=3))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return NeuronEffects(hooked, collect_second_order(hooked, x, layer=1))


def test_ablation_settings_remove_what_they_name(effects):
    rows = torch.arange(len(effects))
    phi = effects.effects(rows)
    mean = phi.mean(0)
    delta = phi - mean
    norms = delta.norm(dim=-1)
    top = norms.topk(3, dim=0).values  # τ halfway between the 2nd and 3rd largest: no norm sits on it
    tau = (top[1] + top[2]) / 2
    directions = torch.nn.functional.normalize(torch.randn(mean.shape, generator=torch.Generator().manual_seed(1)), dim=-1)
    out = ablated_embeddings(effects, mean, tau, directions=directions, text_directions=2 * directions, batch_size=3)
    base = effects.embedding(rows)
    assert torch.allclose(out["baseline"], base)
    assert torch.allclose(out["all"], base - delta.sum(1), atol=1e-3)
    # significant + insignificant removals together are the 'all' removal
    assert torch.allclose(out["significant"] + out["insignificant"] - out["all"], base, atol=1e-3)
    significant = (norms > tau)[..., None]
    assert torch.allclose(out["significant"], base - (delta * significant).sum(1), atol=1e-3)
    # a text direction is used up to its length: the same as the unit direction
    assert torch.allclose(out["rank1"], out["text"], atol=1e-3)
    with pytest.raises(ValueError, match="normalized=True"):
        ablated_embeddings(NeuronEffects(HookedViT.from_open_clip(tiny_clip(seed=3)), effects.stats, normalized=False),
                           mean, tau)


def test_ablation_accuracy_counts_labelled_images_only():
    classifier = torch.eye(3)
    embeddings = {"a": torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]), "b": torch.tensor([[0, 1.0, 0]] * 3)}
    assert ablation_accuracy(embeddings, classifier, torch.tensor([0, 1, -1])) == {"a": 1.0, "b": 0.5}
    with pytest.raises(ValueError, match="no labelled images"):
        ablation_accuracy(embeddings, classifier, torch.tensor([-1, -1, -1]))
