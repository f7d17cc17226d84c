"""Exact pixel geometry of CLIP evaluation preprocessing, so that maps and masks line up with the image.

open_clip's eval preprocess is one resize followed by one centre crop (or crop-or-pad):

- ``resize_mode="shortest"`` (default): shorter side -> S (torchvision rule: the longer side becomes
  ``int(S * long / short)``), then ``CenterCrop(S)``;
- ``resize_mode="squash"``: resize straight to (S, S), no crop;
- ``resize_mode="longest"``: longer side -> S (``round(side / ratio)``), then centre crop-or-pad to S.

The whole geometry is therefore four integer pairs: the original size (H0, W0), the resized size (Hr, Wr), the
offset (top, left) of the model window inside the resized frame (negative = padding), and the model input size
(S_h, S_w). Model pixel (y, x) shows resized pixel (y + top, x + left).

Centre-crop offsets follow torchvision exactly: ``top = round((Hr - S_h) / 2)`` with Python's round
(half to even), and when the crop is larger than the image, ``-((S_h - Hr) // 2)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

ResizeMode = Literal["shortest", "squash", "longest"]

# Transforms that do not move pixels: they are skipped when reading a preprocess pipeline.
_PIXELWISE_TRANSFORMS = {
    "Normalize",
    "ToTensor",
    "PILToTensor",
    "MaybeToTensor",
    "MaybeConvertMode",
    "ConvertImageDtype",
    "ToDtype",
    "ToImage",
    "ToPureTensor",
    "Grayscale",
}


def _pair(size: int | Sequence[int | np.integer]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(s) for s in size)
    if len(size) == 1:
        return (size[0], size[0])
    if len(size) != 2:
        raise ValueError(f"expected an int or an (h, w) pair, got {size!r}")
    return size  # type: ignore[return-value]


def _shortest_edge_size(
    original_size: tuple[int, int], short_target: int, max_size: int | None = None
) -> tuple[int, int]:
    """torchvision ``Resize(int)``: shorter side -> target, longer side -> ``int(target * long / short)``."""
    h, w = original_size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = short_target, int(short_target * long / short)
    if max_size is not None:
        if max_size <= short_target:
            raise ValueError(f"max_size={max_size} must exceed the requested shorter side {short_target}")
        if new_long > max_size:
            new_short, new_long = int(max_size * new_short / new_long), max_size
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return (new_h, new_w)


def _keep_ratio_size(original_size: tuple[int, int], target_size: tuple[int, int], longest: float) -> tuple[int, int]:
    """open_clip ``ResizeKeepRatio``: ratio interpolates between the min (longest=0) and max (longest=1) side ratio."""
    h, w = original_size
    ratio_h, ratio_w = h / target_size[0], w / target_size[1]
    ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
    return (round(h / ratio), round(w / ratio))


def _centre_offset(frame: int, window: int) -> int:
    """Offset of a centred window in a frame along one axis (negative when the frame is padded)."""
    if window > frame:
        return -((window - frame) // 2)
    return round((frame - window) / 2.0)


def _pillow_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output pixel for a Pillow NEAREST resize.

    Pillow walks the source coordinate ``(x + 0.5) * in / out`` by repeated addition in float64 and truncates;
    accumulating with ``cumsum`` reproduces its tie-breaking exactly (checked against Pillow in the tests).
    """
    if in_size == out_size:
        return np.arange(out_size)
    step = in_size / out_size
    coords = np.cumsum(np.concatenate([[step * 0.5], np.full(out_size - 1, step)]))
    return np.minimum(coords.astype(np.int64), in_size - 1)


def _as_tensor(x: Tensor | np.ndarray) -> Tensor:
    return x if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x))


def upsample_patch_map(
    patch_map: Float[Tensor, "*batch grid_h grid_w"], image_size: int | Sequence[int | np.integer]
) -> Float[Tensor, "*batch H W"]:
    """Bilinear upsampling (``align_corners=False``) of a patch-grid map to the model input size.

    When the image size is the grid size times the patch size this equals ``interpolate(scale_factor=patch)``,
    the published protocol.
    """
    patch_map = _as_tensor(patch_map)
    if patch_map.ndim < 2:
        raise ValueError(f"patch_map needs at least 2 dims (grid_h, grid_w), got shape {tuple(patch_map.shape)}")
    out_h, out_w = _pair(image_size)
    batch_shape = patch_map.shape[:-2]
    flat = patch_map.reshape(-1, 1, *patch_map.shape[-2:])
    if not flat.is_floating_point():
        flat = flat.float()
    up = F.interpolate(flat, size=(out_h, out_w), mode="bilinear", align_corners=False)
    return up.reshape(*batch_shape, out_h, out_w)


@dataclass(frozen=True)
class PreprocessGeometry:
    """Where each model-input pixel comes from in the original image (one resize, then a centred crop/pad).

    Attributes:
        original_size: (H0, W0) of the original image.
        resized_size: (Hr, Wr) after the resize step.
        crop_offset: (top, left) of the model window in the resized frame; negative values mean padding.
        output_size: (S_h, S_w) of the model input.
    """

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    crop_offset: tuple[int, int]
    output_size: tuple[int, int]

    # ----------------------------------------------------------------------------------------------- builders
    @classmethod
    def from_image_size(
        cls,
        image_size: int | Sequence[int | np.integer],
        original_size: Sequence[int | np.integer],
        resize_mode: ResizeMode = "shortest",
    ) -> PreprocessGeometry:
        """Geometry of ``open_clip.image_transform(image_size, is_train=False, resize_mode=...)``."""
        target = _pair(image_size)
        original = _pair(original_size)
        if min(original) < 1 or min(target) < 1:
            raise ValueError(f"sizes must be positive, got original {original}, image_size {target}")
        if resize_mode == "shortest":
            if target[0] == target[1]:
                resized = _shortest_edge_size(original, target[0])
            else:
                resized = _keep_ratio_size(original, target, longest=0.0)
        elif resize_mode == "squash":
            resized = target
        elif resize_mode == "longest":
            resized = _keep_ratio_size(original, target, longest=1.0)
        else:
            raise ValueError(f"resize_mode must be 'shortest', 'squash' or 'longest', got {resize_mode!r}")
        offset = (_centre_offset(resized[0], target[0]), _centre_offset(resized[1], target[1]))
        return cls(original, resized, offset, target)

    @classmethod
    def from_transform(cls, preprocess: Callable, original_size: Sequence[int | np.integer]) -> PreprocessGeometry:
        """Read the geometry off a preprocess pipeline (a torchvision ``Compose`` or a list of transforms).

        Understands torchvision ``Resize`` and ``CenterCrop`` and open_clip ``ResizeKeepRatio`` and
        ``CenterCropOrPad``, in the order resize-then-crop (either may be absent). Pixel-wise steps
        (``Normalize``, tensor conversion, mode conversion, plain functions) are skipped. Anything else, such as
        random crops, raises ``ValueError`` rather than giving a silently wrong geometry.
        """
        steps = getattr(preprocess, "transforms", preprocess)
        if not isinstance(steps, (list, tuple)):
            steps = [steps]
        original = _pair(original_size)
        size = original
        resized: tuple[int, int] | None = None
        offset = (0, 0)
        output: tuple[int, int] | None = None
        for step in steps:
            name = type(step).__name__
            if name in _PIXELWISE_TRANSFORMS or inspect.isfunction(step):
                continue
            if output is not None:
                raise ValueError(f"unsupported preprocess: geometric step {name} after the crop")
            if name == "Resize":
                if resized is not None:
                    raise ValueError("unsupported preprocess: two resize steps")
                if isinstance(step.size, int) or len(step.size) == 1:
                    short = step.size if isinstance(step.size, int) else step.size[0]
                    size = _shortest_edge_size(size, int(short), step.max_size)
                else:
                    size = _pair(step.size)
                resized = size
            elif name == "ResizeKeepRatio":
                if resized is not None:
                    raise ValueError("unsupported preprocess: two resize steps")
                if getattr(step, "random_scale_prob", 0) > 0 or getattr(step, "random_aspect_prob", 0) > 0:
                    raise ValueError("ResizeKeepRatio with random scale/aspect has no fixed geometry")
                size = _keep_ratio_size(size, _pair(step.size), float(step.longest))
                resized = size
            elif name in ("CenterCrop", "CenterCropOrPad"):
                output = _pair(step.size)
                offset = (_centre_offset(size[0], output[0]), _centre_offset(size[1], output[1]))
            else:
                raise ValueError(
                    f"unsupported transform {name} in preprocess; only Resize/ResizeKeepRatio then "
                    "CenterCrop/CenterCropOrPad can be mapped exactly"
                )
        resized = resized if resized is not None else original
        output = output if output is not None else resized
        return cls(original, resized, offset, output)

    # ------------------------------------------------------------------------------------------ forward maps
    def _check_original(self, x: Tensor, what: str) -> None:
        if x.ndim < 2 or tuple(x.shape[-2:]) != self.original_size:
            raise ValueError(f"{what} must end in the original size {self.original_size}, got {tuple(x.shape)}")

    def _source_indices(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Original-image row/col index of each model pixel, and whether it lies inside the image (not padding)."""
        indices, inside = [], []
        for axis in range(2):
            rows = _pillow_nearest_indices(self.original_size[axis], self.resized_size[axis])
            pos = np.arange(self.output_size[axis]) + self.crop_offset[axis]
            ok = (pos >= 0) & (pos < self.resized_size[axis])
            indices.append(torch.from_numpy(rows[np.clip(pos, 0, self.resized_size[axis] - 1)]))
            inside.append(torch.from_numpy(ok))
        return indices[0], indices[1], inside[0], inside[1]

    def mask_to_model_input(self, mask: Bool[Tensor, "*batch H0 W0"] | np.ndarray) -> Bool[Tensor, "*batch S_h S_w"]:
        """Apply the image's resize (nearest, Pillow's index rule) and crop/pad to a mask; padding is background.

        Nonzero values count as foreground. Equals ``CenterCrop(Resize(mask, NEAREST))`` on a PIL mask.
        """
        mask = _as_tensor(mask)
        self._check_original(mask, "mask")
        rows, cols, row_in, col_in = self._source_indices()
        out = (mask != 0)[..., rows[:, None], cols[None, :]]
        return out & (row_in[:, None] & col_in[None, :]).to(out.device)

    def valid_model_region(self) -> Bool[Tensor, "S_h S_w"]:
        """True where the model pixel shows the image, False on padding (only 'longest' mode pads)."""
        _, _, row_in, col_in = self._source_indices()
        return row_in[:, None] & col_in[None, :]

    # ------------------------------------------------------------------------------------------ inverse maps
    def _original_centres_in_model(self, axis: int) -> Tensor:
        """Model-frame edge coordinate of each original pixel centre: (i + 0.5) * Hr / H0 - top."""
        n = self.original_size[axis]
        scale = self.resized_size[axis] / n
        return (torch.arange(n, dtype=torch.float64) + 0.5) * scale - self.crop_offset[axis]

    def valid_original_region(self) -> Bool[Tensor, "H0 W0"]:
        """True where the original pixel's centre falls inside the model window (the part the model sees)."""
        inside = []
        for axis in range(2):
            v = self._original_centres_in_model(axis)
            inside.append((v >= 0) & (v < self.output_size[axis]))
        return inside[0][:, None] & inside[1][None, :]

    def model_map_to_original(
        self,
        model_map: Float[Tensor, "*batch h w"] | np.ndarray,
        mode: Literal["bilinear", "nearest"] = "bilinear",
    ) -> Float[Tensor, "*batch H0 W0"]:
        """Carry a map from the model frame back onto the original image; pixels the model never saw are NaN.

        A map of the model input size (S_h, S_w) is used as is; any other trailing size is taken as a patch
        grid and first upsampled with :func:`upsample_patch_map`. Each original pixel centre is mapped into the
        model frame (undo the crop, undo the resize) and sampled there: bilinear with edge clamping (the same
        weights as ``interpolate(align_corners=False)``) or nearest. Where the centre falls outside the model
        window (cropped away by the centre crop) the result is NaN.
        """
        model_map = _as_tensor(model_map)
        if model_map.ndim < 2:
            raise ValueError(f"model_map needs at least 2 dims, got shape {tuple(model_map.shape)}")
        if tuple(model_map.shape[-2:]) != self.output_size:
            model_map = upsample_patch_map(model_map, self.output_size)
        if not model_map.is_floating_point():
            model_map = model_map.float()
        if mode not in ("bilinear", "nearest"):
            raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")

        weights, indices, inside = [], [], []
        for axis in range(2):
            size = self.output_size[axis]
            v = self._original_centres_in_model(axis)
            inside.append((v >= 0) & (v < size))
            if mode == "nearest":
                i0 = v.floor().clamp(0, size - 1).long()
                indices.append((i0, i0))
                weights.append(torch.zeros_like(v))
            else:
                p = (v - 0.5).clamp(0, size - 1)
                i0 = p.floor().long()
                indices.append((i0, (i0 + 1).clamp(max=size - 1)))
                weights.append(p - i0)
        (r0, r1), (c0, c1) = indices
        wy = weights[0].to(model_map.dtype)[:, None].to(model_map.device)
        wx = weights[1].to(model_map.dtype)[None, :].to(model_map.device)
        top = model_map[..., r0[:, None], c0[None, :]] * (1 - wx) + model_map[..., r0[:, None], c1[None, :]] * wx
        bottom = model_map[..., r1[:, None], c0[None, :]] * (1 - wx) + model_map[..., r1[:, None], c1[None, :]] * wx
        out = top * (1 - wy) + bottom * wy
        valid = (inside[0][:, None] & inside[1][None, :]).to(out.device)
        return out.masked_fill(~valid, float("nan"))
