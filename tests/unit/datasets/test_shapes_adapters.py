"""datasets/shapes_adapters.py: the shapes world as labelled scenes, a segmentation set, zero-shot texts and the
balanced spurious evaluation set (item i in group i % 4)."""

import open_clip
import pytest
import torch

from vit_lens_clip.datasets.shapes_adapters import (
    ShapesScenes,
    ShapesSegmentation,
    sample_scenes,
    scene_images,
    shapes_bird_classes,
    shapes_classes,
    shapes_eval_set,
    shapes_group_names,
    shapes_images,
    shapes_texts,
)

PRE = open_clip.image_transform(64, is_train=False)


def test_scenes_carry_their_task_labels():
    scenes = ShapesScenes(4, PRE, seed=3, task="colour")
    texts = shapes_texts()["colour"]
    for i in range(4):
        item = scenes[i]
        assert item["image"].shape == (3, 64, 64) and item["index"] == i
        # the label indexes the colour texts, and names the scene's own colour
        assert texts[item["label"]] == f"a {scenes.scenes[i].attributes.colour} shape"
    images, labels = shapes_images(PRE, 4, seed=3, task="colour")
    assert labels.tolist() == [scenes[i]["label"] for i in range(4)]
    assert torch.equal(images[2], scenes[2]["image"])  # the same seeded stream


def test_sample_scenes_is_reproducible():
    a, b = sample_scenes(3, seed=7), sample_scenes(3, seed=7)
    assert [s.caption for s in a] == [s.caption for s in b]
    assert torch.equal(scene_images(PRE, a), scene_images(PRE, b))
    assert [s.caption for s in sample_scenes(3, seed=8)] != [s.caption for s in a]


def test_segmentation_masks_are_the_objects():
    data = ShapesSegmentation(2, PRE, seed=1)
    item = data[1]
    assert item["mask"].shape == (64, 64) and item["mask"].any() and not item["mask"].all()
    assert item["shape"] in shapes_classes()[0] and item["shape"] in item["caption"]
    with pytest.raises(IndexError):
        data[2]
    with pytest.raises(ValueError):
        ShapesSegmentation(0, PRE)


def test_spurious_eval_set_is_balanced():
    names = shapes_group_names()
    assert len(names) == 4 and names[2 * 1 + 0] == "waterbird on land"
    assert shapes_bird_classes()[0] == ["landbird", "waterbird"]
    data = shapes_eval_set(PRE, n_images=8)
    for i in (0, 5, 7):
        item = data[i]
        assert item["group"] == i % 4
        assert names[item["group"]].startswith(["landbird", "waterbird"][item["label"]])

