"""Ablations, directions, selectivity, segmentation and concepts: identities that must hold exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import rel_err, tiny_clip

from vit_lens_clip import HookedViT
from vit_lens_clip.methods.neurons.ablation import (
    ablated_embeddings,
    ablation_accuracy,
    concentration,
    selectivity,
    significance_threshold,
)
from vit_lens_clip.methods.neurons.concepts import image_concepts, spurious_words
from vit_lens_clip.methods.neurons.directions import (
    neuron_directions,
    variance_explained,
)
from vit_lens_clip.methods.neurons.effects import NeuronEffects, collect_second_order
from vit_lens_clip.methods.neurons.omp import SparseCode
from vit_lens_clip.methods.neurons.segmentation import (
    neuron_maps,
    top_neurons_per_class,
)


@pytest.fixture(scope="module")
def setup():
    model = HookedViT.from_open_clip(tiny_clip(seed=3, layers=3))
    x = torch.randn(40, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    stats = collect_second_order(model, x, 0, labels=torch.arange(40) % 3, batch_size=16)
    fx = NeuronEffects(model, stats)
    mean = fx.mean(batch_size=16)
    norms = fx.centred_norms(mean, batch_size=16)
    return model, x, fx, mean, norms


def test_effects_at_and_mean(setup):
    _, _, fx, mean, norms = setup
    rows = torch.tensor([[0, 5], [7, 1], [3, 3]])
    neurons = torch.tensor([2, 40])
    full = fx.effects(torch.arange(len(fx)))
    assert rel_err(fx.effects_at(rows, neurons), full[rows, neurons]) <= 1e-5
    assert rel_err(mean, full.mean(0)) <= 1e-5
    assert rel_err(norms, (full - mean).norm(dim=-1)) <= 1e-5


def test_threshold_selectivity_concentration(setup):
    _, _, _, _, norms = setup
    tau = significance_threshold(norms, top_fraction=0.1)  # 4 of 40 images
    assert torch.equal(tau, norms.sort(0, descending=True).values[3])
    sel = selectivity(norms, tau)
    assert torch.allclose(sel, torch.full_like(sel, 3 / 40))  # strict >: the 4th image itself is not significant
    conc = concentration(norms, 0.1)
    assert bool(((conc >= 0.1 - 1e-6) & (conc <= 1)).all())


def test_ablation_settings_bracket_the_baseline(setup):
    _, _, fx, mean, norms = setup
    rows = torch.arange(len(fx))
    delta = fx.effects(rows) - mean
    never = torch.full((norms.shape[1],), float("inf"))
    out = ablated_embeddings(fx, mean, never, batch_size=16)
    # nothing is significant: removing the significant effects removes nothing; removing the rest removes all
    assert rel_err(out["significant"], out["baseline"]) <= 1e-5
    assert rel_err(out["insignificant"], out["all"]) <= 1e-5
    assert rel_err(out["all"], fx.embedding() - delta.sum(1)) <= 1e-5
    tau = significance_threshold(norms, 0.1)
    out = ablated_embeddings(fx, mean, tau, batch_size=16)
    # the two partial ablations add back complementary halves
    assert rel_err(out["significant"] + out["insignificant"] - out["all"], out["baseline"]) <= 1e-4
    # rank-1 with directions that span each δ exactly (a basis over D dimensions gives it back in full)
    dirs = neuron_directions(fx, mean, norms, top_k=10)
    assert rel_err(dirs.directions.norm(dim=-1), torch.ones(norms.shape[1])) <= 1e-5
    out = ablated_embeddings(fx, mean, tau, dirs.directions, batch_size=16)
    along = torch.einsum("bnd,nd->bn", delta, dirs.directions)
    assert rel_err(out["rank1"], out["all"] + torch.einsum("bn,nd->bd", along, dirs.directions)) <= 1e-5
    ve, _ = variance_explained(fx, mean, dirs.directions, batch_size=16)
    assert rel_err(ve, along.pow(2).sum(0) / delta.pow(2).sum((0, 2))) <= 1e-4
    # sign by majority over each neuron's top images (a tie at exactly half stays a tie)
    top_delta = delta[dirs.top_rows.T, torch.arange(norms.shape[1])]  # [k, N, D]
    assert bool(((torch.einsum("knd,nd->kn", top_delta, dirs.directions) > 0).sum(0) * 2 >= 10).all())
    acc = ablation_accuracy(out, torch.randn(fx.d_out, 3), fx.stats.labels)
    assert set(acc) == {"baseline", "all", "significant", "insignificant", "rank1"}


def test_text_setting_with_exact_text_direction(setup):
    _, _, fx, mean, norms = setup
    dirs = neuron_directions(fx, mean, norms, top_k=10)
    tau = significance_threshold(norms, 0.1)
    scaled = 3.0 * dirs.directions  # a text reconstruction equal to r_n up to scale gives the rank-1 result
    out = ablated_embeddings(fx, mean, tau, dirs.directions, scaled, batch_size=16)
    assert rel_err(out["text"], out["rank1"]) <= 1e-5


def test_neuron_maps_and_selection(setup):
    model, x, fx, _, _ = setup
    classifier = F.normalize(torch.randn(fx.d_out, 3, generator=torch.Generator().manual_seed(1)), dim=0)
    dirs = {0: F.normalize(torch.randn(model.cfg.d_mlp, fx.d_out), dim=-1),
            1: F.normalize(torch.randn(model.cfg.d_mlp, fx.d_out), dim=-1)}
    layer_of, neuron_of = top_neurons_per_class(dirs, classifier, top=7)
    scores = torch.cat([dirs[0], dirs[1]]) @ classifier
    best = scores.abs().topk(7, dim=0).indices.T
    assert torch.equal(layer_of * model.cfg.d_mlp + neuron_of, best)
    labels = torch.tensor([0, 2])
    maps = neuron_maps(model, x[:2], classifier, (layer_of, neuron_of), labels=labels)
    _, cache = model.run_with_cache(x[:2])
    for b, c in enumerate(labels.tolist()):
        acts = torch.stack([cache[f"blocks.{l}.mlp.hook_post"][b, 1:, n]
                            for l, n in zip(layer_of[c].tolist(), neuron_of[c].tolist())])
        assert rel_err(maps[b].flatten(), acts.mean(0)) <= 1e-5


def test_concepts_and_spurious_words():
    code = SparseCode(atoms=torch.tensor([[0, 1], [1, 2], [2, 3]]), coefs=torch.tensor([[1.0, -0.5], [2.0, 1.0], [1.0, 1.0]]))
    texts = ["red", "blue", "round", "bird"]
    norms = torch.tensor([[2.0, 0.0, 1.0]])
    concepts = image_concepts(norms, torch.tensor([1.0, 1.0, 1.0]), code, texts, top=2)
    assert concepts == [[("red", 2.0), ("blue", -1.0)]]  # only neuron 0 (2.0 > 1.0) is active
    directions = torch.eye(3, 4)
    target, true = torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0, 0.0])
    words = spurious_words(directions, code, texts, target, true, blocked=["blue"], n_neurons=3)
    # along = [1, 1, -1]: red 1·1 = 1, blue −0.5 + 2 = 1.5 (blocked), round 1 − 1 = 0 (dropped), bird −1
    assert words == [("red", 1.0)]
