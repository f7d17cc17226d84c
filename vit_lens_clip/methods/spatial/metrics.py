"""Zero-shot segmentation from a heatmap, and the three segmentation metrics (pixel accuracy, mIoU, mAP).

Published protocol (docs/segmentation.md): clip the upsampled heatmap below 0, min-max normalise it per image, call
foreground every pixel strictly above the normalised map's mean. Scores are then

- pixel accuracy = Σ_images correct pixels / Σ_images pixels (summed over the dataset);
- mIoU = mean over the two classes {background, foreground} of Σ intersection / Σ union (summed over the dataset);
- mAP = mean over images of the average precision of the soft map against the ground-truth mask.

Pixels whose soft map is NaN (e.g. outside the model's crop when scoring in the original frame) or that a
``valid`` mask marks False are left out of every metric.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from vit_lens_clip.datasets.geometry import upsample_patch_map
from vit_lens_clip.errors import BadInputError

ArrayLike = Tensor | np.ndarray
ApMode = Literal["foreground", "both_classes"]


# ---------------------------------------------------------------------------------------------- segmentation
class ZeroShotSegmentation(NamedTuple):
    soft_map: Float[Tensor, "*batch H W"]  # clipped, min-max normalised heatmap in [0, 1] (NaN kept)
    mask: Bool[Tensor, "*batch H W"]  # foreground = soft_map > threshold


def _otsu_threshold(values: Tensor, bins: int = 256) -> Tensor:
    """Otsu's threshold of values in [0, 1]: the bin edge that maximises the between-class variance."""
    hist = torch.histc(values.double(), bins=bins, min=0.0, max=1.0)
    centres = (torch.arange(bins, dtype=torch.float64, device=values.device) + 0.5) / bins
    weight_low = hist.cumsum(0)
    weight_high = hist.sum() - weight_low
    mass_low = (hist * centres).cumsum(0)
    mean_low = mass_low / weight_low.clamp(min=1e-12)
    mean_high = (mass_low[-1] - mass_low) / weight_high.clamp(min=1e-12)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    best = int(torch.argmax(between))
    return torch.tensor((best + 1) / bins, dtype=values.dtype, device=values.device)


def zero_shot_segment(
    heatmap: Float[Tensor, "*batch H W"] | np.ndarray,
    threshold: Literal["mean", "otsu"] | float = "mean",
    clip_negative: bool = True,
) -> ZeroShotSegmentation:
    """Published post-processing of a (pixel-resolution) heatmap into a soft map and a foreground mask.

    Per map (over the last two dims): ``h = max(h, 0)``; ``s = (h - min h) / (max h - min h)`` (a constant map
    becomes all zeros, so no foreground); foreground = ``s > t`` with ``t`` the mean of ``s`` ("mean"), Otsu's
    threshold of ``s`` ("otsu") or a fixed float. NaN pixels are ignored by min/max/mean and stay NaN in the
    soft map and False in the mask. Upsample patch maps first (published order: upsample, clip, normalise).
    """
    heatmap = heatmap if isinstance(heatmap, Tensor) else torch.from_numpy(np.asarray(heatmap))
    if heatmap.ndim < 2:
        raise ValueError(f"heatmap needs at least 2 dims (H, W), got shape {tuple(heatmap.shape)}")
    if not heatmap.is_floating_point():
        heatmap = heatmap.float()
    h = heatmap.clamp(min=0) if clip_negative else heatmap.clone()
    finite = ~torch.isnan(h)
    low = torch.where(finite, h, torch.full_like(h, float("inf"))).amin(dim=(-2, -1), keepdim=True)
    high = torch.where(finite, h, torch.full_like(h, float("-inf"))).amax(dim=(-2, -1), keepdim=True)
    span = high - low
    constant = ~(span > 0)  # also true for all-NaN maps
    soft = torch.where(constant, torch.zeros_like(h), (h - low) / torch.where(constant, torch.ones_like(span), span))
    soft = soft.masked_fill(~finite, float("nan"))

    if isinstance(threshold, str):
        if threshold == "mean":
            cut = soft.nanmean(dim=(-2, -1), keepdim=True)
        elif threshold == "otsu":
            flat = soft.reshape(-1, *soft.shape[-2:])
            cuts = [
                _otsu_threshold(m[~torch.isnan(m)]) if (~torch.isnan(m)).any() else soft.new_tensor(1.0) for m in flat
            ]
            cut = torch.stack(cuts).to(soft).reshape(*soft.shape[:-2], 1, 1)
        else:
            raise ValueError(f"threshold must be 'mean', 'otsu' or a float, got {threshold!r}")
    else:
        if isinstance(threshold, bool) or not 0 <= float(threshold) <= 1:  # NaN fails too
            raise BadInputError(f"threshold must be 'mean', 'otsu' or a number in [0, 1] (the soft map's range), "
                                f"got {threshold!r}")
        cut = soft.new_tensor(float(threshold))
    mask = (soft > cut) & finite
    return ZeroShotSegmentation(soft_map=soft, mask=mask)


class SegmentedImage(NamedTuple):
    """One image's zero-shot segmentation next to its ground truth, all in the same frame."""

    soft_map: Float[Tensor, "H W"]
    mask: Bool[Tensor, "H W"]
    ground_truth: Bool[Tensor, "H W"]


def segment_batch(
    maps: Float[Tensor, "batch grid_h grid_w"],
    batch: Mapping[str, Any],
    frame: Literal["model", "original"] = "model",
    image_size: int | Sequence[int] | None = None,
    threshold: Literal["mean", "otsu"] | float = "mean",
) -> list[SegmentedImage]:
    """``zero_shot_segment`` of each patch map of a ``collate_segmentation`` batch, per image.

    frame "model": the maps are upsampled bilinearly to ``image_size`` (the model input) and compared with
    ``batch["mask"]``; "original": each map is carried back onto its original image by ``batch["geometry"]``
    (pixels cropped away are NaN, so left out of the metrics) and compared with ``batch["original_mask"]``.
    """
    if frame == "model":
        if image_size is None:
            raise ValueError("frame='model' needs image_size (the model's input size)")
        seg = zero_shot_segment(upsample_patch_map(maps, image_size), threshold=threshold)
        return [SegmentedImage(*row) for row in zip(seg.soft_map, seg.mask, batch["mask"])]
    if frame != "original":
        raise ValueError(f"frame must be 'model' or 'original', got {frame!r}")
    if "geometry" not in batch:
        raise ValueError("frame='original' needs a dataset built with include_original=True")
    out = []
    for patch_map, geometry, truth in zip(maps, batch["geometry"], batch["original_mask"]):
        seg = zero_shot_segment(geometry.model_map_to_original(patch_map), threshold=threshold)
        out.append(SegmentedImage(seg.soft_map, seg.mask, truth))
    return out


# ---------------------------------------------------------------------------------------- average precision
def average_precision(scores: ArrayLike, labels: ArrayLike) -> float:
    """Step-wise area under the precision-recall curve, ``Σ_k (R_k - R_{k-1}) P_k``.

    k runs over the distinct score values in decreasing order; at threshold k every pixel scoring >= that value
    is predicted positive, so tied pixels enter together. R_0 = 0. Pixels whose score is NaN are left out (as
    ``zero_shot_segment`` leaves them out). Returns NaN when there are no positives. Same definition as
    scikit-learn's ``average_precision_score``.
    """
    scores = np.asarray(scores.detach().cpu() if isinstance(scores, Tensor) else scores, dtype=np.float64).ravel()
    labels = np.asarray(labels.detach().cpu() if isinstance(labels, Tensor) else labels).ravel().astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels differ in size: {scores.shape} vs {labels.shape}")
    scored = ~np.isnan(scores)  # NaN pixels are ignored, as in zero_shot_segment (NaN would sort as the lowest score)
    scores, labels = scores[scored], labels[scored]
    n_pos = int(labels.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    true_pos = np.cumsum(sorted_labels)
    # last position of each run of equal scores = one threshold
    run_ends = np.r_[np.flatnonzero(np.diff(sorted_scores) != 0), len(sorted_scores) - 1]
    tp = true_pos[run_ends].astype(np.float64)
    precision = tp / (run_ends + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


# --------------------------------------------------------------------------------------------- accumulator
def _to_numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


class SegmentationMetrics:
    """Accumulates pixel accuracy, mIoU and mAP over a dataset of binary (foreground/background) masks.

    - ``pixel_accuracy`` = Σ correct / Σ pixels, summed over the dataset.
    - ``miou`` = ½ (IoU_bg + IoU_fg), each IoU = Σ intersection / Σ union summed over the dataset.
      ``miou_per_image`` is also given: the per-image mean over classes with a non-empty union, averaged over
      images.
    - ``mean_ap`` = mean over images of an AP of the soft map (see :func:`average_precision`):
      ``ap_mode="foreground"`` ranks pixels by the soft map against the foreground mask; images whose
      ground truth has no foreground have no AP and are skipped (counted in ``n_images_without_foreground``).
      ``ap_mode="both_classes"`` is the published code's variant: pixels are scored twice, as foreground with
      s and as background with 1 - s, and one AP is taken over the pooled 2·H·W entries (so the soft map must
      lie in [0, 1], as :func:`zero_shot_segment` produces); it is defined for every image.
      Both variants are always reported (``mean_ap_foreground``, ``mean_ap_both_classes``); the latter skips
      maps outside [0, 1] unless it is the selected mode, where such a map raises ``ValueError``.

    Pixels with a NaN soft map or ``valid == False`` are ignored everywhere. All results are fractions in [0, 1].
    """

    def __init__(self, ap_mode: ApMode = "foreground") -> None:
        if ap_mode not in ("foreground", "both_classes"):
            raise ValueError(f"ap_mode must be 'foreground' or 'both_classes', got {ap_mode!r}")
        self.ap_mode = ap_mode
        self.reset()

    def reset(self) -> None:
        self.correct = 0
        self.total = 0
        self.intersection = np.zeros(2, dtype=np.int64)  # [background, foreground]
        self.union = np.zeros(2, dtype=np.int64)
        self.per_image_miou: list[float] = []
        self.ap_foreground: list[float] = []
        self.ap_both_classes: list[float] = []
        self.n_images = 0
        self.n_images_without_foreground = 0

    def update(
        self,
        soft_map: Float[ArrayLike, "*batch H W"] | None,
        pred_mask: Bool[ArrayLike, "*batch H W"],
        gt_mask: Bool[ArrayLike, "*batch H W"],
        valid: Bool[ArrayLike, "*batch H W"] | None = None,
    ) -> None:
        """Add one image ([H, W]) or a batch ([*batch, H, W]). ``soft_map=None`` skips AP for these images."""
        pred = _to_numpy(pred_mask).astype(bool)
        gt = _to_numpy(gt_mask).astype(bool)
        if pred.shape != gt.shape or pred.ndim < 2:
            raise ValueError(f"pred_mask {pred.shape} and gt_mask {gt.shape} must share a shape [*batch, H, W]")
        keep = np.ones_like(gt) if valid is None else _to_numpy(valid).astype(bool)
        soft = None
        if soft_map is not None:
            soft = _to_numpy(soft_map).astype(np.float64)
            if soft.shape != gt.shape:
                raise ValueError(f"soft_map {soft.shape} must match the masks {gt.shape}")
            keep = keep & ~np.isnan(soft)
            soft = soft.reshape(-1, gt.shape[-2] * gt.shape[-1])
        if keep.shape != gt.shape:
            raise ValueError(f"valid {keep.shape} must match the masks {gt.shape}")
        flat = (-1, gt.shape[-2] * gt.shape[-1])
        for i, (p, g, k) in enumerate(zip(pred.reshape(flat), gt.reshape(flat), keep.reshape(flat))):
            self._update_one(None if soft is None else soft[i][k], p[k], g[k])

    def _update_one(self, soft: np.ndarray | None, pred: np.ndarray, gt: np.ndarray) -> None:
        self.n_images += 1
        self.correct += int((pred == gt).sum())
        self.total += int(gt.size)
        ious = []
        for cls, (p, g) in enumerate(((~pred, ~gt), (pred, gt))):
            inter, union = int((p & g).sum()), int((p | g).sum())
            self.intersection[cls] += inter
            self.union[cls] += union
            if union > 0:
                ious.append(inter / union)
        if ious:
            self.per_image_miou.append(float(np.mean(ious)))
        if not gt.any():
            self.n_images_without_foreground += 1
        if soft is None or soft.size == 0:
            return
        if gt.any():
            self.ap_foreground.append(average_precision(soft, gt))
        in_unit = soft.min() >= -1e-6 and soft.max() <= 1 + 1e-6
        if not in_unit and self.ap_mode == "both_classes":
            raise ValueError("ap_mode='both_classes' needs soft maps in [0, 1]; normalise with zero_shot_segment")
        if in_unit:
            scores = np.concatenate([1.0 - soft, soft])
            labels = np.concatenate([~gt, gt])
            self.ap_both_classes.append(average_precision(scores, labels))

    def compute(self) -> dict[str, float]:
        """Return pixel_accuracy, miou, mean_ap (per ``ap_mode``) and the supporting numbers."""
        nan = float("nan")
        iou = np.where(self.union > 0, self.intersection / np.maximum(self.union, 1), nan)
        ap_fg = float(np.mean(self.ap_foreground)) if self.ap_foreground else nan
        ap_both = float(np.mean(self.ap_both_classes)) if self.ap_both_classes else nan
        return {
            "pixel_accuracy": self.correct / self.total if self.total else nan,
            "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else nan,
            "mean_ap": ap_fg if self.ap_mode == "foreground" else ap_both,
            "iou_background": float(iou[0]),
            "iou_foreground": float(iou[1]),
            "miou_per_image": float(np.mean(self.per_image_miou)) if self.per_image_miou else nan,
            "mean_ap_foreground": ap_fg,
            "mean_ap_both_classes": ap_both,
            "n_images": self.n_images,
            "n_images_ap": len(self.ap_foreground if self.ap_mode == "foreground" else self.ap_both_classes),
            "n_images_without_foreground": self.n_images_without_foreground,
        }
