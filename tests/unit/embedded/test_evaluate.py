"""embedded/evaluate.py: the shipped model read from its folder is far above chance on colour (its measured
figure is 99.8%), image embeddings are unit vectors, the held-out stream is reproducible, the tables are complete."""

import pytest
import torch

from vit_lens_clip.embedded.evaluate import (
    encode_images,
    evaluate_attributes,
    held_out_scenes,
    load_model,
    markdown_table,
    spurious_eval_scenes,
    zero_shot_accuracy,
)


@pytest.fixture(scope="module")
def shipped():
    return load_model()


def test_held_out_and_spurious_scenes_are_reproducible():
    assert [s.caption for s in held_out_scenes(3)] == [s.caption for s in held_out_scenes(3)]
    assert [s.caption for s in held_out_scenes(3, seed=1)] != [s.caption for s in held_out_scenes(3)]
    groups = [s.attributes.group for s in spurious_eval_scenes(2)]
    assert sorted(groups) == [0, 0, 1, 1, 2, 2, 3, 3]  # balanced over the four groups


def test_shipped_model_reads_colour(shipped):
    model, preprocess, tokenizer = shipped
    results = evaluate_attributes(model, preprocess, tokenizer, n=24, attributes=("colour",), count_aware=False)
    assert results["n/colour"] == 24 and results["colour"] >= 0.8 > results["chance/colour"]
    scenes = held_out_scenes(4)
    feats = encode_images(model, preprocess, [s.image for s in scenes], batch_size=3)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(4), atol=1e-5)
    with pytest.raises(ValueError, match="3 labels for 4 images"):
        zero_shot_accuracy(model, tokenizer, feats, [0, 1, 2], "colour")


def test_markdown_table():
    table = markdown_table({"shape": 0.5, "chance/shape": 1 / 6, "n/shape": 10, "count-aware/shape": 0.6},
                           {"group/landbird on land": 0.75, "worst": 0.5})
    assert "| shape | 50.0% | 60.0% | 16.7% | 10 |" in table
    assert "| landbird on land | 75.0% |" in table and "| worst | 50.0% |" in table
