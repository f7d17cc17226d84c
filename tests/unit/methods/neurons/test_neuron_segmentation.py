"""methods/neurons/segmentation.py: the neurons most aligned with each class, and maps that average their
post-activations per patch (tiny model)."""

import torch
from conftest import tiny_clip

from vit_lens_clip.methods.neurons.segmentation import neuron_maps, top_neurons_per_class
from vit_lens_clip.model.hooked_vit import HookedViT


def test_top_neurons_per_class_ranks_by_absolute_alignment():
    directions = {2: torch.tensor([[1.0, 0.0], [0.0, 0.1]]), 1: torch.tensor([[0.0, -3.0], [0.5, 0.0]])}
    classifier = torch.eye(2)
    layers, neurons = top_neurons_per_class(directions, classifier, top=2)
    # class 0: layer 2 neuron 0 (1.0) then layer 1 neuron 1 (0.5); class 1: layer 1 neuron 0 (|−3|), layer 2 neuron 1
    assert layers.tolist() == [[2, 1], [1, 2]] and neurons.tolist() == [[0, 1], [0, 1]]
    assert top_neurons_per_class(directions, classifier, top=10)[0].shape == (2, 4)


def test_neuron_maps_average_the_selected_post_activations():
    hooked = HookedViT.from_open_clip(tiny_clip(seed=5))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    selected = (torch.tensor([[0, 2], [1, 1]]), torch.tensor([[3, 7], [5, 9]]))
    classifier = torch.randn(48, 2, generator=torch.Generator().manual_seed(1))
    maps = neuron_maps(hooked, x, classifier, selected, labels=torch.tensor([1, 0]))
    _, cache = hooked.run_with_cache(x)
    post = lambda l: cache[f"blocks.{l}.mlp.hook_post"][:, 1:]  # noqa: E731
    assert maps.shape == (2, 4, 4)
    assert torch.allclose(maps[0].flatten(), (post(1)[0, :, 5] + post(1)[0, :, 9]) / 2, atol=1e-6)
    assert torch.allclose(maps[1].flatten(), (post(0)[1, :, 3] + post(2)[1, :, 7]) / 2, atol=1e-6)
    predicted = (cache["hook_image_embed"] @ classifier).argmax(-1)
    unlabelled = neuron_maps(hooked, x, classifier, selected)
    for b in range(2):  # without labels each image uses its predicted class's neurons
        assert torch.allclose(unlabelled[b], neuron_maps(hooked, x, classifier, selected,
                                                         labels=predicted.clone().fill_(int(predicted[b])))[b])
