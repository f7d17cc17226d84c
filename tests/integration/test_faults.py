"""Silent wrong results found by probing the public API from a notebook: each test returned plausible but
wrong numbers (or failed with an unrelated message) before its fix. One test per fault."""

from __future__ import annotations

import re

import jaxtyping
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import rel_err, tiny_clip

from vit_lens_clip import HookedViT
from vit_lens_clip.decompose.parts import decompose
from vit_lens_clip.errors import BadInputError
from vit_lens_clip.methods.ablation import ablate_posthoc
from vit_lens_clip.methods.retrieval import nearest_images
from vit_lens_clip.methods.spatial.heatmaps import class_directions, class_heatmap, joint_map, predict_classes
from vit_lens_clip.methods.spatial.metrics import zero_shot_segment
from vit_lens_clip.methods.textspan.algorithm import text_span
from vit_lens_clip.methods.zeroshot import accuracy, build_classifier, logits
from vit_lens_clip.model.hooked_text import HookedTextTransformer


@pytest.fixture(scope="module")
def tiny():
    source = tiny_clip(seed=7)  # 3 layers, 4 heads, output 48, 32x32 images
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return source, HookedViT.from_open_clip(source), images


@pytest.fixture
def as_a_user():
    """Without jaxtyping's run-time checks (the tests' import hook), as in a notebook: the message a user sees."""
    before = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", before)


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


# ------------------------------------------------------------------------------------------ the model
def test_editing_the_hooked_model_leaves_the_fp32_source_untouched(tiny):
    """fp32 weights were aliased (fp16 ones copied): zeroing a hooked head also zeroed it in open_clip."""
    source, _, images = tiny
    hooked = HookedViT.from_open_clip(source)
    before = source.encode_image(images).detach().clone()
    with torch.no_grad():
        hooked.blocks[2].attn.W_O.zero_()
        hooked.W_proj.mul_(3)
    assert torch.equal(source.encode_image(images), before)


def test_editing_the_hooked_text_tower_leaves_the_source_untouched(tiny):
    source = tiny_clip(seed=7)
    text = HookedTextTransformer.from_open_clip(source)
    tokens = torch.randint(1, 400, (2, 16), generator=torch.Generator().manual_seed(0))
    before = source.encode_text(tokens).detach().clone()
    with torch.no_grad():
        text.W_proj.mul_(3)
    assert torch.equal(source.encode_text(tokens), before)


def test_raw_0_255_float_images_raise(tiny):
    """Pixels that skipped the preprocess gave embeddings of the right shape and norm, all wrong."""
    _, model, _ = tiny
    raw = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 199
    raw[0] = 0.5
    raw[1, 2, 5, 7] = 200.0
    message = ("image 1 has a value of magnitude 200, beyond the 25 of normalised model inputs: raw 0..255 pixels? "
               "pass each PIL image through the model's preprocess (loaded.preprocess)")
    with pytest.raises(BadInputError, match=re.escape(message)):
        model(raw)


def test_normalised_images_still_pass_and_match_open_clip(tiny):
    source, model, images = tiny
    with torch.no_grad():
        assert rel_err(model(images * 4), source.encode_image(images * 4)) <= 1e-5  # |x| up to ~16


def test_wrong_width_text_embeddings_to_residual_directions_raise(tiny):
    _, model, _ = tiny
    with pytest.raises(BadInputError, match=re.escape("text embeddings must be [..., 48], got (3, 10)")):
        model.tokens_to_residual_directions(torch.randn(3, 10))


def test_vocabulary_index_out_of_range_raises():
    model = HookedViT.from_open_clip(tiny_clip(seed=7))
    model.set_text_vocab(["a", "b"], unit(torch.randn(2, 48)))
    with pytest.raises(BadInputError, match="token index out of range for a text vocabulary of 2 texts"):
        model.tokens_to_residual_directions(5)


# ----------------------------------------------------------------------------------- decomposition
def test_decompose_with_one_text_as_a_vector_raises(tiny, as_a_user):
    """texts [D] instead of [1, D] returned source_scores for D 'texts' (an outer product), silently."""
    _, model, images = tiny
    with pytest.raises(BadInputError, match=re.escape("texts must be [n, 48], got shape (48,)")):
        decompose(model, images, texts=unit(torch.randn(48)))


def test_decompose_with_wrong_width_texts_raises(tiny):
    _, model, images = tiny
    with pytest.raises(BadInputError, match=re.escape("texts must be [n, 48], got shape (3, 10)")):
        decompose(model, images, texts=torch.randn(3, 10))


def test_head_scores_with_wrong_width_texts_raise(tiny):
    _, model, images = tiny
    parts = decompose(model, images)
    with pytest.raises(BadInputError, match=re.escape("texts must be [n, 48], got shape (3, 10)")):
        parts.head_scores(torch.randn(3, 10))


def test_layers_given_as_one_integer_raise(tiny, as_a_user):
    _, model, images = tiny
    with pytest.raises(BadInputError, match="layers must be a list of layer indices, got 1"):
        decompose(model, images, layers=1)


# ------------------------------------------------------------------------------------------ TextSpan
def _heads(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 20, 8, generator=g, dtype=torch.float64), unit(torch.randn(12, 8, generator=g, dtype=torch.float64))


def test_textspan_with_unnormalised_texts_raises():
    """Longer text rows won the greedy picks: [11, 9, 8] instead of the unit pool's [9, 8, 3]."""
    C, T = _heads()
    scaled = T * torch.arange(1, 13, dtype=torch.float64)[:, None]
    message = "text_embeddings must be unit vectors: row 11 has norm 12; normalise with torch.nn.functional.normalize"
    with pytest.raises(BadInputError, match=re.escape(message)):
        text_span(C, scaled, k=3)


def test_textspan_with_nan_contributions_raises():
    C, T = _heads()
    C[1, 3, 2] = float("nan")
    with pytest.raises(BadInputError, match="contributions contain NaN or inf: TextSpan of such a head is undefined"):
        text_span(C, T, k=3)


def test_textspan_with_nan_texts_raises():
    C, T = _heads()
    T[3] = float("nan")
    with pytest.raises(BadInputError, match="text_embeddings contain NaN or inf"):
        text_span(C, T, k=3)


def test_textspan_with_a_float_k_raises(as_a_user):
    C, T = _heads()
    with pytest.raises(BadInputError, match=re.escape("k and rank must be integers, got k=2.5, rank=80")):
        text_span(C, T, k=2.5)


# ------------------------------------------------------------------------------------------ zero-shot
def test_accuracy_with_labels_out_of_range_raises():
    """A label of 9 (or -1) among 4 classes counted as a miss: accuracy silently 0."""
    scores = torch.randn(5, 4)
    with pytest.raises(BadInputError, match=re.escape("labels must lie in 0..3 (the classes), got -1..9")):
        accuracy(scores, torch.tensor([0, 1, 2, -1, 9]), topk=(1,))


def test_accuracy_with_column_labels_raises(as_a_user):
    """labels [B, 1] broadcast against the top-k indices: 0.28 for a batch of 5, a number no batch can give."""
    with pytest.raises(BadInputError, match=re.escape("disagree: got (5, 4) and (5, 1)")):
        accuracy(torch.randn(5, 4), torch.tensor([[0], [1], [2], [3], [0]]), topk=(1,))


def test_accuracy_of_an_empty_dataset_raises():
    with pytest.raises(BadInputError, match="accuracy of no images: the dataset is empty"):
        accuracy(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))


def test_accuracy_still_counts_correctly():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.2, 0.7], [0.5, 0.3, 0.2], [0.2, 0.5, 0.3]])
    assert accuracy(scores, torch.tensor([0, 2, 1, 0]), topk=(1, 2)) == {"top1": 0.5, "top2": 0.75}


def test_logits_with_a_transposed_classifier_raises(as_a_user):
    with pytest.raises(BadInputError, match=re.escape("classifier [d, n_classes] disagree: got (5, 8) and (4, 8)")):
        logits(torch.randn(5, 8), torch.randn(4, 8))


class _NoModel:  # build_classifier fails on its arguments before it touches the model
    clip = tokenizer = device = None


def test_build_classifier_with_classnames_as_a_string_raises():
    """"red" was iterated into the three classes 'r', 'e', 'd'."""
    with pytest.raises(BadInputError, match="classnames must be a list, got the string 'red'"):
        build_classifier(_NoModel(), "red", ["a {}."])


def test_build_classifier_with_a_template_without_placeholder_raises():
    """Every class got the same text, so the same column: a classifier that cannot tell classes apart."""
    with pytest.raises(BadInputError, match=re.escape("template 'a photo.' has no '{}' for the class name")):
        build_classifier(_NoModel(), ["red", "blue"], ["a photo."])


# ------------------------------------------------------------------------------------------ retrieval
def test_nearest_images_with_layers_that_do_not_match_the_stack_raise():
    heads = torch.randn(10, 2, 4, 8)
    with pytest.raises(BadInputError, match=re.escape("layers [0, 1, 2] must name each of the 2 collected layers")):
        nearest_images(heads, [0, 1, 2], [(2, 0)], 0, n_layers=3)


def test_nearest_images_with_a_numpy_or_tensor_image_index(as_a_user):
    heads = torch.randn(10, 2, 4, 8, generator=torch.Generator().manual_seed(0))
    expected = nearest_images(heads, [1, 2], [(2, 0)], 3, n_layers=3)
    for query in (np.int64(3), torch.tensor(3)):
        got = nearest_images(heads, [1, 2], [(2, 0)], query, n_layers=3)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_nearest_images_with_a_wrong_width_text_query_raises(as_a_user):
    with pytest.raises(BadInputError, match=re.escape("query must be an image index or a text embedding [8], got (5,)")):
        nearest_images(torch.randn(10, 2, 4, 8), [1, 2], [(2, 0)], torch.randn(5), n_layers=3)


# ------------------------------------------------------------------------------------------ maps
@pytest.mark.parametrize("threshold", [1.5, -0.5, float("nan"), True])
def test_segmentation_threshold_outside_the_soft_map_range_raises(threshold, as_a_user):
    """1.5 gave an empty mask, -0.5 an all-foreground one, NaN an empty one, True was taken as 1.0."""
    heatmap = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(BadInputError, match=re.escape("threshold must be 'mean', 'otsu' or a number in [0, 1]")):
        zero_shot_segment(heatmap, threshold=threshold)


def test_joint_map_with_two_texts_raises(tiny, as_a_user):
    """Two texts gave the map of the first alone."""
    _, model, images = tiny
    with pytest.raises(BadInputError, match="joint_map takes one text, got 2: use text_heatmap for several"):
        joint_map(model, images, 2, 0, unit(torch.randn(2, 48)))


def test_class_heatmap_with_a_negative_label_raises(tiny):
    """label -1 silently mapped the last class."""
    _, model, images = tiny
    classifier = unit(torch.randn(3, 48)).T
    with pytest.raises(BadInputError, match=re.escape("labels must lie in 0..2 (the classifier's classes), got -1..1")):
        class_heatmap(model, images, classifier, labels=torch.tensor([0, 1, -1]))


def test_class_directions_with_a_negative_label_raises():
    """label -1 silently gave the last class's direction."""
    classifier = unit(torch.randn(3, 48)).T
    with pytest.raises(BadInputError, match=re.escape("labels must lie in 0..2 (the classifier's classes), got -1..0")):
        class_directions(classifier, torch.tensor([0, -1]))
    assert torch.equal(class_directions(classifier, torch.tensor([2])), (classifier[:, 2] - classifier.mean(1))[None])


def test_predict_classes_with_a_transposed_classifier_raises(tiny, as_a_user):
    """[n_classes, d_out] failed in a matmul with a message about mat1 and mat2."""
    _, model, images = tiny
    with pytest.raises(BadInputError, match=re.escape("the classifier must be [48, n_classes]")):
        predict_classes(model, images, unit(torch.randn(5, 48)))


def test_class_heatmap_with_one_class_raises(tiny):
    """One class minus the mean class is zero: an all-zero map."""
    _, model, images = tiny
    with pytest.raises(BadInputError, match="class_heatmap needs at least 2 classes"):
        class_heatmap(model, images, unit(torch.randn(1, 48)).T)


# ------------------------------------------------------------------------------------------ ablation
@pytest.fixture(scope="module")
def parts_and_means(tiny):
    _, model, images = tiny
    parts = decompose(model, images, layers=[1, 2])
    return parts, {k: getattr(parts, k).mean(0) for k in ("embed", "attns", "mlps", "heads")}


def test_ablating_a_head_listed_twice_ablates_it_once(parts_and_means):
    """(2, 0) and (-1, 0) are one head: its mean was swapped in twice."""
    parts, means = parts_and_means
    once = ablate_posthoc(parts, means, heads=[(2, 0)])
    expected = parts.total() - parts.heads[:, 1, 0] + means["heads"][1, 0]
    assert torch.allclose(once, expected, atol=1e-6)
    assert torch.equal(ablate_posthoc(parts, means, heads=[(2, 0), (-1, 0), (2, 0)]), once)
    assert torch.equal(ablate_posthoc(parts, means, attn_layers=[2, -1]), ablate_posthoc(parts, means, attn_layers=[2]))


def test_ablating_a_layer_and_one_of_its_heads_raises(parts_and_means):
    parts, means = parts_and_means
    message = "head (2, 0) lies in attention layer 2, which is ablated as a whole: list the layer or its heads, not both"
    with pytest.raises(BadInputError, match=re.escape(message)):
        ablate_posthoc(parts, means, attn_layers=[2], heads=[(2, 0)])


def test_normalize_with_a_zero_embedding_raises():
    """normalize=True divided every part by ‖y‖ = 0: all-NaN parts, without a word."""
    model = HookedViT.from_open_clip(tiny_clip(seed=7))
    with torch.no_grad():
        model.W_proj.zero_()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with pytest.raises(BadInputError, match=re.escape("normalize=True: image(s) [0, 1] have a zero embedding")):
        decompose(model, images, normalize=True)
