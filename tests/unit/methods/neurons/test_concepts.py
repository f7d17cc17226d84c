"""methods/neurons/concepts.py: image concepts sum coefficients × norms of the active neurons only; spurious words
keep positive, unblocked texts not too close to the target."""

import torch

from vit_lens_clip.methods.neurons.concepts import image_concepts, spurious_words
from vit_lens_clip.methods.neurons.omp import SparseCode

TEXTS = ["red", "blue", "green", "red square"]
# neuron 0 reads texts 0 (+1.0) and 1 (+0.5); neuron 1 reads texts 2 (+2.0) and 1 (−1.0)
CODE = SparseCode(atoms=torch.tensor([[0, 1], [2, 1]]), coefs=torch.tensor([[1.0, 0.5], [2.0, -1.0]]))


def test_image_concepts():
    norms = torch.tensor([[3.0, 0.1], [3.0, 1.0], [0.0, 0.0]])
    threshold = torch.tensor([1.0, 0.5])
    out = image_concepts(norms, threshold, CODE, TEXTS, top=2)
    assert out[0] == [("red", 3.0), ("blue", 1.5)]  # only neuron 0 is active
    assert [t for t, _ in out[1]] == ["red", "green"]  # blue: 0.5·3 − 1·1 = 0.5, below both
    assert out[1][0][1] == 3.0 and out[1][1][1] == 2.0
    assert out[2] == []


def test_spurious_words():
    directions = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    target, true = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    # along = [1, −1]: text 0 gets +1, text 1 gets 0.5 + 1 = 1.5, text 2 gets −2 (dropped)
    words = spurious_words(directions, CODE, TEXTS, target, true)
    assert words == [("blue", 1.5), ("red", 1.0)]
    assert spurious_words(directions, CODE, TEXTS, target, true, blocked=["BLU"]) == [("red", 1.0)]
    embeddings = torch.tensor([[0.9, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    assert spurious_words(directions, CODE, TEXTS, target, true, text_embeddings=embeddings) == [("blue", 1.5)]
    assert spurious_words(directions, CODE, TEXTS, target, true, n_neurons=1) == [("red", 1.0), ("blue", 0.5)]
