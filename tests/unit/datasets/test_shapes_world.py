"""Properties of the synthetic shapes world: determinism, exact masks, captions, spurious-cue statistics."""

import re

import numpy as np
import pytest
import torch

from vit_lens_clip.datasets.shapes_world import (
    ATTRIBUTES,
    BIRDS,
    COLOURS,
    COUNTS,
    LAND_PLACES,
    PLACES,
    POSITIONS,
    SHAPES,
    SIZES,
    SPURIOUS_AGREEMENT,
    TRAIN_BIRD_SIZE,
    WATER_PLACES,
    ShapesDataset,
    ShapesWorld,
    SpuriousBirdsDataset,
    attributes_of,
    collate_scenes,
    count_aware_labels,
    counted_noun_phrase,
    label_of,
    make_caption,
    plural,
    position_phrase,
    render,
    render_background,
    zero_shot_labels,
)


def _scenes(n, seed=0):
    world = ShapesWorld(image_size=64, seed=seed)
    rng = np.random.default_rng(seed)
    return [world.sample(rng) for _ in range(n)]


def test_same_seed_same_scenes_and_different_seed_differs():
    a, b, c = _scenes(20, seed=3), _scenes(20, seed=3), _scenes(20, seed=4)
    for x, y in zip(a, b):
        assert np.array_equal(x.image, y.image)
        assert np.array_equal(x.masks, y.masks)
        assert x.caption == y.caption
        assert x.attributes == y.attributes
    assert sum(np.array_equal(x.image, z.image) for x, z in zip(a, c)) == 0


def test_dataset_items_are_deterministic_and_order_free():
    ds = ShapesDataset(10, seed=7)
    first = [np.asarray(ds[i]["image"]) for i in range(10)]
    again = [np.asarray(ShapesDataset(10, seed=7)[i]["image"]) for i in reversed(range(10))][::-1]
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    assert not np.array_equal(np.asarray(ShapesDataset(10, seed=8)[0]["image"]), first[0])


def test_world_default_stream_is_seeded():
    x = ShapesWorld(seed=11).sample()
    y = ShapesWorld(seed=11).sample()
    assert np.array_equal(x.image, y.image) and x.caption == y.caption


def test_masks_are_exactly_the_painted_pixels():
    for scene in _scenes(60, seed=1):
        spec = scene.spec
        background = np.clip(render_background(spec.place, 64, spec.texture_seed), 0, 255).round().astype(np.uint8)
        outside = ~scene.foreground
        assert np.array_equal(scene.image[outside], background[outside])
        # every object pixel is either the object's colour or the dark outline, never background texture
        colour = np.clip(np.array(COLOURS[spec.colour]) + np.array(spec.colour_jitter), 0, 255).round()
        pix = scene.image[scene.foreground].astype(int)
        is_colour = (np.abs(pix - colour) <= 0.5).all(axis=1)
        is_outline = (pix == 20).all(axis=1)
        assert (is_colour | is_outline).all()
        assert is_colour.sum() > 0.3 * len(pix)
        # objects are disjoint and each has pixels; the union is the foreground
        assert scene.masks.shape == (spec.count, 64, 64)
        assert scene.masks.sum(axis=0).max() <= 1
        assert (scene.masks.reshape(spec.count, -1).sum(axis=1) > 10).all()
        assert np.array_equal(scene.masks.any(axis=0), scene.foreground)


def test_object_masks_sit_in_their_grid_cells():
    for scene in _scenes(40, seed=2):
        for mask, pos in zip(scene.masks, scene.attributes.positions):
            ys, xs = np.nonzero(mask)
            row, col = divmod(POSITIONS.index(pos), 3)
            assert int(ys.mean() // (64 / 3)) == row and int(xs.mean() // (64 / 3)) == col


def test_large_objects_are_larger_than_small_ones():
    areas = {"small": [], "large": []}
    for scene in _scenes(200, seed=5):
        areas[scene.attributes.size].append(scene.masks[0].sum())
    assert min(areas["large"]) > max(areas["small"])


def test_places_differ_in_background_colour():
    means = {p: np.mean([render_background(p, 64, s).mean(axis=(0, 1)) for s in range(5)], axis=0) for p in PLACES}
    for i, p in enumerate(PLACES):
        for q in PLACES[i + 1:]:
            assert np.abs(means[p] - means[q]).max() > 15, (p, q)


def test_captions_mention_attributes_at_designed_rates():
    scenes = _scenes(1000, seed=9)
    words = lambda s: s.caption
    colour = np.mean([s.attributes.colour in words(s) for s in scenes])
    shape = np.mean([bool(re.search(rf"\b({s.attributes.shape}|{plural(s.attributes.shape)})\b", words(s)))
                     for s in scenes])
    single = [s for s in scenes if s.attributes.count == 1]
    position = np.mean([position_phrase(s.attributes.position) in words(s) for s in single])
    multi = [s for s in scenes if s.attributes.count > 1]
    count = np.mean([("two" if s.attributes.count == 2 else "three") in words(s) for s in multi])
    assert colour > 0.9 and shape > 0.99 and position > 0.75 and count == 1.0
    # no caption names a wrong colour or a wrong shape
    for s in scenes:
        assert not any(re.search(rf"\b{c}\b", s.caption) for c in COLOURS if c != s.attributes.colour)
        assert not any(re.search(rf"\b{x}\b", s.caption) for x in SHAPES if x != s.attributes.shape)


def test_forced_mentions_and_bad_attribute():
    attrs = _scenes(1, seed=0)[0].attributes
    rng = np.random.default_rng(0)
    for _ in range(50):
        cap = make_caption(attrs, rng, must_mention=("size", "place", "colour"))
        assert attrs.size in cap and attrs.colour in cap
    with pytest.raises(ValueError):
        make_caption(attrs, rng, must_mention=("texture",))


def test_hard_negative_groups_differ_in_exactly_one_attribute():
    world = ShapesWorld(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(50):
        group = world.sample_group(rng, 4)
        base = group[0].attributes
        for variant in group[1:]:
            v = variant.attributes
            changed = [a for a in ("shape", "colour", "size", "place", "count")
                       if getattr(v, a) != getattr(base, a)]
            if v.count == base.count and v.positions != base.positions:
                changed.append("position")
            assert len(changed) == 1, changed
            assert variant.spec.texture_seed == group[0].spec.texture_seed
        # captions within a group are pairwise distinct (they name every varied attribute)
        assert len({s.caption for s in group}) == len(group)


def test_spurious_correlation_in_training_stream():
    world = ShapesWorld(seed=0)
    rng = np.random.default_rng(0)
    scenes = [world.sample_bird(rng, "train") for _ in range(2000)]
    agree = np.mean([(s.attributes.bird == "waterbird") == (s.attributes.place in WATER_PLACES) for s in scenes])
    assert abs(agree - SPURIOUS_AGREEMENT) < 0.015
    assert abs(np.mean([s.attributes.bird == "waterbird" for s in scenes]) - 0.5) < 0.04
    assert all(s.attributes.place in LAND_PLACES + WATER_PLACES for s in scenes)
    assert all(s.attributes.bird in s.caption for s in scenes)


def test_spurious_eval_set_is_balanced_with_group_labels():
    ds = SpuriousBirdsDataset(200, seed=1, split="eval")
    items = [ds[i] for i in range(len(ds))]
    groups = np.array([it["group"] for it in items])
    assert np.bincount(groups, minlength=4).tolist() == [50, 50, 50, 50]
    for it in items:
        a = it["attributes"]
        assert it["label"] == BIRDS.index(a["bird"])
        assert it["group"] == 2 * it["label"] + (a["place"] in WATER_PLACES)


def test_birds_drawn_at_the_training_size_unless_asked():
    """Training and the default evaluation set share the world's bird size; the other size is opt-in."""
    world = ShapesWorld(seed=0)
    assert world.bird_size == TRAIN_BIRD_SIZE
    rng = np.random.default_rng(3)
    assert {world.sample_bird(rng, "train").attributes.size for _ in range(20)} == {TRAIN_BIRD_SIZE}
    assert {SpuriousBirdsDataset(8, seed=2)[i]["attributes"]["size"] for i in range(8)} == {TRAIN_BIRD_SIZE}
    other = next(z for z in SIZES if z != TRAIN_BIRD_SIZE)
    shifted = SpuriousBirdsDataset(8, seed=2, bird_size=other)
    assert {shifted[i]["attributes"]["size"] for i in range(8)} == {other}
    # the glyph really changes size: more painted pixels for large birds
    small = SpuriousBirdsDataset(8, seed=2, bird_size="small")
    large = SpuriousBirdsDataset(8, seed=2, bird_size="large")
    assert all(small[i]["mask"].sum() < large[i]["mask"].sum() for i in range(8))
    with pytest.raises(ValueError):
        ShapesWorld(bird_size="huge")


def test_training_batch_mixes_birds_and_groups():
    world = ShapesWorld(seed=0)
    scenes = world.training_batch(np.random.default_rng(0), 128, group_size=4, bird_fraction=0.25)
    assert len(scenes) == 128
    frac = np.mean([s.attributes.bird is not None for s in scenes])
    assert 0.15 < frac < 0.35


def test_zero_shot_label_sets_cover_every_attribute():
    scenes = _scenes(100, seed=4)
    for attribute in ATTRIBUTES + ("bird",):
        classes, templates = zero_shot_labels(attribute)
        prompts = [t(c) for c in classes for t in templates]
        assert len(set(prompts)) == len(prompts)
        if attribute != "bird":
            for s in scenes:
                y = label_of(s.attributes, attribute)
                assert y is None or 0 <= y < len(classes)
    with pytest.raises(ValueError):
        zero_shot_labels("texture")


def test_counted_noun_phrase_follows_the_caption_grammar():
    assert counted_noun_phrase(1, ["red"], "circle") == "a red circle"
    assert counted_noun_phrase(1, ["orange"], "star") == "an orange star"
    assert counted_noun_phrase(1, [], "circle", say_one=True) == "one circle"
    assert counted_noun_phrase(3, ["small", "red"], "cross") == "three small red crosses"
    with pytest.raises(ValueError):
        counted_noun_phrase(4, [], "star")
    # every multi-object caption contains the counted plural phrase of its scene
    for s in _scenes(200, seed=9):
        a = s.attributes
        if a.count > 1:
            words = re.findall(r"[a-z]+", s.caption)
            assert COUNTS[a.count - 1] in words and plural(a.shape) in words


def test_count_aware_labels_pair_every_value_with_every_count():
    for attribute in ("colour", "shape", "place", "size"):
        values = zero_shot_labels(attribute)[0]
        pairs, templates = count_aware_labels(attribute)
        assert pairs == [(v, n) for v in values for n in (1, 2, 3)]
        prompts = [t(p) for p in pairs for t in templates]
        assert len(set(prompts)) == len(prompts)
        for (value, count) in pairs:  # every prompt names the value and is worded for the count
            for t in templates:
                prompt = t((value, count))
                words = re.findall(r"[a-z]+", prompt)
                assert value in prompt
                assert (COUNTS[count - 1] in words) == (count > 1)
    pairs, templates = count_aware_labels("shape")
    assert templates[0](("circle", 2)) == "two red circles"
    assert templates[0](("circle", 1)) == "a red circle"
    for attribute in ("position", "count", "texture"):
        with pytest.raises(ValueError):
            count_aware_labels(attribute)


def test_dataset_with_transform_and_collate():
    def to_tensor(im):
        return torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255

    ds = ShapesDataset(6, seed=0, transform=to_tensor)
    batch = collate_scenes([ds[i] for i in range(6)])
    assert batch["image"].shape == (6, 3, 64, 64)
    assert batch["mask"].shape == (6, 64, 64) and batch["mask"].dtype == torch.bool
    assert len(batch["caption"]) == 6 and len(batch["object_masks"]) == 6
    with pytest.raises(IndexError):
        ds[6]


def test_render_is_a_pure_function_of_the_spec():
    scene = _scenes(1, seed=6)[0]
    image, masks = render(scene.spec, 64)
    assert np.array_equal(image, scene.image) and np.array_equal(masks, scene.masks)
    assert attributes_of(scene.spec) == scene.attributes


@pytest.mark.parametrize("attribute", ["position", "shape", "count"])
def test_sweeps_vary_only_the_swept_attribute_and_name_it(attribute):
    world = ShapesWorld(seed=0)
    rng = np.random.default_rng(1)
    for _ in range(20):
        sweep = world.sample_sweep(rng, 4, attribute)
        base = sweep[0].attributes
        fixed = [a for a in ("shape", "colour", "size", "place", "count") if a != attribute]
        for scene in sweep:
            assert all(getattr(scene.attributes, a) == getattr(base, a) for a in fixed)
            if attribute == "position":
                assert position_phrase(scene.attributes.position) in scene.caption
            if attribute == "shape":
                assert scene.attributes.shape in scene.caption
        if attribute != "count":  # only three counts exist, so a sweep of four repeats one
            assert len({s.attributes.position if attribute == "position" else s.attributes.shape
                        for s in sweep}) == 4


def test_sweep_weights_choose_the_swept_attribute_and_reject_bad_mixes():
    world = ShapesWorld(seed=0)
    rng = np.random.default_rng(3)
    for _ in range(10):  # all weight on position: every sweep holds one object that moves, nothing else changes
        sweep = world.sample_sweep(rng, 4, weights={"position": 1.0, "shape": 0.0})
        assert len({s.attributes.position for s in sweep}) == 4
        assert len({(s.attributes.shape, s.attributes.colour, s.attributes.place) for s in sweep}) == 1
    batch = world.training_batch(rng, 32, bird_fraction=0.0, sweep_fraction=1.0, sweep_weights={"shape": 1.0})
    for k in range(0, 32, 4):
        group = batch[k:k + 4]
        assert len({s.attributes.shape for s in group}) == 4
        assert len({s.attributes.positions for s in group}) == 1
    for bad in ({"texture": 1.0}, {"shape": -1.0, "position": 2.0}, {"shape": 0.0}):
        with pytest.raises(ValueError):
            world.sample_sweep(rng, 4, weights=bad)
