"""methods/neurons/directions.py: r_n is the first singular direction of a neuron's top centred effects, unit,
pointing with most of them; variance_explained is its share of the effects' energy."""

import pytest
import torch
from conftest import tiny_clip

from vit_lens_clip.methods.neurons.directions import neuron_directions, variance_explained
from vit_lens_clip.methods.neurons.effects import NeuronEffects, collect_second_order
from vit_lens_clip.model.hooked_vit import HookedViT


@pytest.fixture(scope="module")
def setup():
    hooked = HookedViT.from_open_clip(tiny_clip(seed=4))
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    effects = NeuronEffects(hooked, collect_second_order(hooked, x, layer=1))
    phi = effects.effects(torch.arange(6)).double()
    mean = phi.mean(0)
    return effects, phi, mean, (phi - mean).norm(dim=-1)


def test_directions_are_the_top_singular_vectors(setup):
    effects, phi, mean, norms = setup
    out = neuron_directions(effects, mean.float(), norms.float(), top_k=4, neuron_batch=100)
    n = phi.shape[1]
    assert out.directions.shape == (n, phi.shape[2]) and out.top_rows.shape == (n, 4)
    assert torch.allclose(out.directions.norm(dim=-1).double(), torch.ones(n, dtype=torch.float64), atol=1e-4)
    for neuron in (0, 17, n - 1):
        rows = out.top_rows[neuron]
        assert torch.equal(rows, norms[:, neuron].topk(4).indices)
        delta = phi[rows, neuron] - mean[neuron]
        _, s, vh = torch.linalg.svd(delta, full_matrices=False)
        assert abs(abs(float(vh[0] @ out.directions[neuron].double())) - 1) < 1e-3
        assert ((delta @ out.directions[neuron].double()) > 0).sum() * 2 >= 4  # the sign most effects share
        assert abs(float(out.top_variance_explained[neuron]) - float(s[0] ** 2 / s.pow(2).sum())) < 1e-3


def test_variance_explained_is_the_share_along_the_direction(setup):
    effects, phi, mean, _ = setup
    direction = torch.nn.functional.normalize(torch.randn(phi.shape[1], phi.shape[2],
                                                          generator=torch.Generator().manual_seed(3)), dim=-1)
    per_neuron, pooled = variance_explained(effects, mean.float(), direction, batch_size=4)
    delta = phi - mean
    along = torch.einsum("bnd,nd->bn", delta, direction.double()).pow(2).sum(0)
    assert torch.allclose(per_neuron.double(), along / delta.pow(2).sum((0, 2)), rtol=1e-3)
    assert 0 <= pooled <= 1 and (per_neuron <= 1 + 1e-5).all()
