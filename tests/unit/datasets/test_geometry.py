"""Geometry of open_clip eval preprocessing: masks and maps must land on the same pixels as the image."""

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from conftest import assert_refused
from PIL import Image
from torchvision.transforms import InterpolationMode

from vit_lens_clip.datasets.geometry import PreprocessGeometry, upsample_patch_map

MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN)[:, None, None]
STD = torch.tensor(open_clip.OPENAI_DATASET_STD)[:, None, None]


def _unnormalise(x: torch.Tensor) -> torch.Tensor:
    return x * STD + MEAN


def _nearest_mask_pipeline(preprocess):
    """The preprocess's own geometric steps, rebuilt with NEAREST interpolation, for masks as PIL images."""
    steps = []
    for step in preprocess.transforms:
        name = type(step).__name__
        if name == "Resize":
            steps.append(T.Resize(step.size, interpolation=InterpolationMode.NEAREST, max_size=step.max_size))
        elif name == "ResizeKeepRatio":
            steps.append(
                open_clip.transform.ResizeKeepRatio(
                    step.size, longest=step.longest, interpolation=InterpolationMode.NEAREST
                )
            )
        elif name in ("CenterCrop", "CenterCropOrPad"):
            steps.append(step)
    return T.Compose(steps)


def _square_image(h, w, box):
    """Black image with a white rectangle box=(top, left, bottom, right); returns PIL image and bool mask."""
    mask = np.zeros((h, w), dtype=bool)
    t, l, b, r = box
    mask[t:b, l:r] = True
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[mask] = 255
    return Image.fromarray(img), mask


@pytest.mark.parametrize("mode", ["shortest", "squash", "longest"])
def test_from_transform_matches_from_image_size(mode):
    rng = np.random.default_rng(0)
    for size in (64, 224):
        preprocess = open_clip.image_transform(image_size=size, is_train=False, resize_mode=mode)
        for h, w in rng.integers(17, 900, size=(60, 2)):
            assert PreprocessGeometry.from_transform(preprocess, (h, w)) == PreprocessGeometry.from_image_size(
                size, (h, w), mode
            )


def test_non_square_target_size_reads_resize_keep_ratio():
    preprocess = open_clip.image_transform(image_size=(48, 80), is_train=False)
    for h, w in [(100, 100), (90, 300), (300, 90)]:
        geo = PreprocessGeometry.from_transform(preprocess, (h, w))
        assert geo == PreprocessGeometry.from_image_size((48, 80), (h, w))
        out = preprocess(Image.new("RGB", (w, h)))
        assert tuple(out.shape[-2:]) == geo.output_size == (48, 80)


@pytest.mark.parametrize("h,w", [(64, 69), (64, 67), (71, 64), (64, 64), (66, 64)])
def test_crop_offsets_match_real_preprocess_exactly(h, w):
    """Shorter side already 64, so the resize is the identity; pixels encode their own (row, col)."""
    preprocess = open_clip.image_transform(image_size=64, is_train=False)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    img = np.stack([rows * 3, cols * 3, np.zeros_like(rows)], axis=-1).astype(np.uint8)
    out = _unnormalise(preprocess(Image.fromarray(img)))
    got_rows = torch.round(out[0] * 255 / 3).long()
    got_cols = torch.round(out[1] * 255 / 3).long()
    geo = PreprocessGeometry.from_transform(preprocess, (h, w))
    top, left = geo.crop_offset
    # torchvision rounds (frame - window) / 2 half-to-even: 5 / 2 -> 2, 3 / 2 -> 2
    assert (top, left) == (round((h - 64) / 2), round((w - 64) / 2))
    assert torch.equal(got_rows, torch.arange(64)[:, None].expand(64, 64) + top)
    assert torch.equal(got_cols, torch.arange(64)[None, :].expand(64, 64) + left)


@pytest.mark.parametrize("mode", ["shortest", "squash", "longest"])
def test_mask_matches_pil_nearest_pipeline_exactly(mode):
    rng = np.random.default_rng(1)
    preprocess = open_clip.image_transform(image_size=64, is_train=False, resize_mode=mode)
    mask_pipeline = _nearest_mask_pipeline(preprocess)
    for h, w in [(120, 200), (333, 91), (64, 65), (500, 375), (37, 64)] + [
        tuple(s) for s in rng.integers(20, 600, (10, 2))
    ]:
        mask = rng.random((h, w)) > 0.5
        reference = np.asarray(mask_pipeline(Image.fromarray(mask.astype(np.uint8) * 255))) > 0
        got = PreprocessGeometry.from_transform(preprocess, (h, w)).mask_to_model_input(mask)
        assert got.dtype == torch.bool
        assert np.array_equal(got.numpy(), reference), (h, w)


def test_square_lands_where_the_image_puts_it():
    """A square in a wide image: the transformed mask and the transformed image agree up to boundary pixels."""
    preprocess = open_clip.image_transform(image_size=64, is_train=False)
    h, w = 120, 200
    img, mask = _square_image(h, w, (30, 120, 90, 180))  # right of centre, partly cropped away
    bright = _unnormalise(preprocess(img)).mean(0) > 0.5
    geo = PreprocessGeometry.from_transform(preprocess, (h, w))
    assert geo.resized_size == (64, 106) and geo.crop_offset == (0, 21)
    got = geo.mask_to_model_input(mask)
    assert got.shape == bright.shape == (64, 64)
    mismatch = got ^ bright
    # every disagreement touches the square's edge (within one pixel of a pixel of the other label)
    assert not (mismatch & ~_near_edge(got, 1)).any()
    iou = (got & bright).sum() / (got | bright).sum()
    assert iou > 0.9
    # the published shortcut (mask squashed to 64x64 while the image is cropped) is visibly misaligned
    naive = F.interpolate(torch.from_numpy(mask)[None, None].float(), size=(64, 64), mode="nearest")[0, 0].bool()
    naive_iou = (naive & bright).sum() / (naive | bright).sum()
    assert naive_iou < iou - 0.2


def test_round_trip_and_nan_outside_crop():
    preprocess = open_clip.image_transform(image_size=64, is_train=False)
    h, w = 120, 200
    _, mask = _square_image(h, w, (20, 60, 100, 140))
    geo = PreprocessGeometry.from_transform(preprocess, (h, w))
    back = geo.model_map_to_original(geo.mask_to_model_input(mask).float())
    assert back.shape == (h, w)
    valid = geo.valid_original_region()
    assert torch.equal(~torch.isnan(back), valid)
    # wide image: whole rows are kept, the cropped columns are two side bands
    assert torch.equal(valid, valid[:1].expand_as(valid))
    cols_kept = valid[0].nonzero().squeeze(1)
    assert torch.equal(cols_kept, torch.arange(cols_kept[0], cols_kept[-1] + 1))  # one contiguous band
    scale = geo.resized_size[1] / w
    assert cols_kept.min() == int(np.ceil(geo.crop_offset[1] / scale - 0.5))
    assert len(cols_kept) == pytest.approx(64 / scale, abs=1.5)
    # away from the square's edge (more than one model pixel = ~2 original pixels) the round trip is exact
    recovered = (back > 0.5) & valid
    mismatch = (recovered ^ torch.from_numpy(mask)) & valid
    assert mismatch.any()  # boundary pixels do move
    assert not (mismatch & ~_near_edge(torch.from_numpy(mask), 2)).any()


def _near_edge(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Pixels within `radius` (Chebyshev) of a pixel of the other label: dilation minus erosion."""
    x = mask[None, None].float()
    k = 2 * radius + 1
    dilated = F.max_pool2d(x, k, 1, radius)[0, 0].bool()
    eroded = (-F.max_pool2d(-x, k, 1, radius))[0, 0].bool()
    return dilated & ~eroded


def test_model_map_to_original_bilinear_equals_interpolate_when_squashed():
    geo = PreprocessGeometry.from_image_size(16, (40, 24), resize_mode="squash")
    m = torch.randn(2, 16, 16, dtype=torch.float64)
    expected = F.interpolate(m[:, None], size=(40, 24), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(geo.model_map_to_original(m), expected)
    nearest = geo.model_map_to_original(m, mode="nearest")
    ref_nearest = F.interpolate(m[:, None], size=(40, 24), mode="nearest-exact")[:, 0]
    torch.testing.assert_close(nearest, ref_nearest)


def test_patch_grid_maps_are_upsampled_first():
    geo = PreprocessGeometry.from_image_size(64, (50, 90))
    grid = torch.randn(3, 4, 4)
    out = geo.model_map_to_original(grid)
    assert out.shape == (3, 50, 90)
    torch.testing.assert_close(out, geo.model_map_to_original(upsample_patch_map(grid, 64)), equal_nan=True)


def test_upsample_patch_map_is_bilinear_by_patch_size():
    grid = torch.randn(2, 3, 7, 7)
    up = upsample_patch_map(grid, 112)
    assert up.shape == (2, 3, 112, 112)
    ref = F.interpolate(grid.reshape(6, 1, 7, 7), scale_factor=16, mode="bilinear")
    torch.testing.assert_close(up, ref.reshape(2, 3, 112, 112))
    torch.testing.assert_close(upsample_patch_map(torch.full((5, 5), 2.5), (80, 80)), torch.full((80, 80), 2.5))


def test_longest_mode_pads_with_background():
    preprocess = open_clip.image_transform(image_size=64, is_train=False, resize_mode="longest")
    geo = PreprocessGeometry.from_transform(preprocess, (40, 160))
    assert geo.resized_size == (16, 64) and geo.crop_offset == (-24, 0)
    region = geo.valid_model_region()
    assert region.sum() == 16 * 64 and region[24:40].all()
    full = geo.mask_to_model_input(np.ones((40, 160), dtype=bool))
    assert torch.equal(full, region)
    assert not torch.isnan(geo.model_map_to_original(torch.rand(64, 64))).any()


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="unsupported transform"):
        PreprocessGeometry.from_transform(open_clip.image_transform(64, is_train=True), (100, 120))
    assert_refused(lambda: PreprocessGeometry.from_image_size(64, (10, 10), resize_mode="stretch"),
                   "resize_mode must be 'shortest', 'squash' or 'longest', got 'stretch'")
    geo = PreprocessGeometry.from_image_size(64, (100, 120))
    with pytest.raises(ValueError, match="original size"):
        geo.mask_to_model_input(np.zeros((120, 100), dtype=bool))
