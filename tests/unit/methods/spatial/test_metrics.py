"""Segmentation metrics and zero-shot thresholding on hand-made masks with hand-computed answers."""

import numpy as np
import pytest
import torch
from conftest import assert_refused

from vit_lens_clip.methods.spatial.metrics import SegmentationMetrics, average_precision, zero_shot_segment

GT = np.array(
    [
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ],
    dtype=bool,
)
PRED = np.array(
    [
        [1, 1, 1, 0],
        [1, 0, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ],
    dtype=bool,
)


# ------------------------------------------------------------------------------------------ average precision
def test_average_precision_by_hand():
    scores = np.array([0.9, 0.8, 0.8, 0.3, 0.1])
    labels = np.array([1, 0, 1, 0, 1], dtype=bool)
    # thresholds 0.9 / 0.8 / 0.3 / 0.1 -> (TP, FP) = (1,0) (2,1) (2,2) (3,2); recall 1/3, 2/3, 2/3, 1
    expected = (1 / 3) * 1 + (1 / 3) * (2 / 3) + 0 * (2 / 4) + (1 / 3) * (3 / 5)
    assert average_precision(scores, labels) == pytest.approx(expected)  # = 34/45
    assert average_precision(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(34 / 45)
    # NaN pixels are left out (they used to rank as the lowest scores): a NaN positive changes nothing
    with_nan = average_precision(np.r_[scores, np.nan, np.nan], np.r_[labels, True, False])
    assert with_nan == pytest.approx(34 / 45)


def test_average_precision_ties_enter_together():
    # one threshold only: precision 2/4 at recall 1, whatever the order of the tied pixels
    labels = np.array([1, 0, 0, 1], dtype=bool)
    assert average_precision(np.full(4, 0.5), labels) == pytest.approx(0.5)
    assert average_precision(np.full(4, 0.5), labels[::-1].copy()) == pytest.approx(0.5)
    assert np.isnan(average_precision(np.random.rand(5), np.zeros(5, dtype=bool)))


def test_average_precision_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(5, 300))
        scores = np.round(rng.random(n), int(rng.integers(1, 3)))  # coarse rounding makes many ties
        labels = rng.random(n) < rng.uniform(0.05, 0.9)
        if not labels.any():
            labels[0] = True
        assert average_precision(scores, labels) == pytest.approx(
            sklearn_metrics.average_precision_score(labels, scores), abs=1e-12
        )


# ------------------------------------------------------------------------------------------------ accumulator
def test_pixel_accuracy_and_iou_summed_over_dataset():
    metrics = SegmentationMetrics()
    # image 1: TP 3, FP 1 (0,2), FN 1 (1,1), TN 11
    metrics.update(None, PRED, GT)
    # image 2: empty ground truth, one false-positive pixel
    pred2 = np.zeros((4, 4), dtype=bool)
    pred2[3, 3] = True
    metrics.update(None, torch.from_numpy(pred2), torch.zeros(4, 4, dtype=torch.bool))
    out = metrics.compute()
    assert out["pixel_accuracy"] == pytest.approx((14 + 15) / 32)
    assert out["iou_foreground"] == pytest.approx((3 + 0) / (5 + 1))
    assert out["iou_background"] == pytest.approx((11 + 15) / (13 + 16))
    assert out["miou"] == pytest.approx(((3 / 6) + (26 / 29)) / 2)
    assert out["miou_per_image"] == pytest.approx(((3 / 5 + 11 / 13) / 2 + (0 / 1 + 15 / 16) / 2) / 2)
    assert out["n_images"] == 2 and out["n_images_without_foreground"] == 1
    assert np.isnan(out["mean_ap"]) and out["n_images_ap"] == 0  # no soft maps given


def test_ap_foreground_and_both_classes_by_hand():
    # soft map 1 on the four foreground pixels and on one background pixel, 0 elsewhere
    soft = GT.astype(float)
    soft[3, 3] = 1.0
    metrics = SegmentationMetrics()
    metrics.update(soft, soft > 0.5, GT)
    out = metrics.compute()
    # foreground AP: a single threshold with TP 4, FP 1 -> precision 4/5 at recall 1
    assert out["mean_ap"] == out["mean_ap_foreground"] == pytest.approx(4 / 5)
    # pooled two-class AP (published): 16 positives (one per pixel).
    # score 1: fg entries 4 pos + 1 neg, bg entries (1 - s) 11 pos -> TP 15, FP 1; score 0: TP 16, FP 16
    assert out["mean_ap_both_classes"] == pytest.approx((15 / 16) * (15 / 16) + (1 / 16) * (16 / 32))
    both = SegmentationMetrics(ap_mode="both_classes")
    both.update(soft, soft > 0.5, GT)
    assert both.compute()["mean_ap"] == pytest.approx(233 / 256)


def test_empty_foreground_is_skipped_for_foreground_ap_only():
    metrics = SegmentationMetrics()
    rng = np.random.default_rng(0)
    soft = rng.random((2, 4, 4))
    gt = np.stack([GT, np.zeros_like(GT)])
    metrics.update(soft, soft > 0.5, gt)  # batched
    out = metrics.compute()
    assert out["n_images_ap"] == 1 and len(metrics.ap_both_classes) == 2
    assert out["mean_ap"] == pytest.approx(average_precision(soft[0], GT))


def test_batched_update_equals_one_by_one():
    rng = np.random.default_rng(3)
    soft = rng.random((3, 2, 5, 6))
    gt = rng.random((3, 2, 5, 6)) > 0.6
    pred = soft > 0.4
    batched, single = SegmentationMetrics(), SegmentationMetrics()
    batched.update(torch.from_numpy(soft), torch.from_numpy(pred), torch.from_numpy(gt))
    for s, p, g in zip(soft.reshape(6, 5, 6), pred.reshape(6, 5, 6), gt.reshape(6, 5, 6)):
        single.update(s, p, g)
    a, b = batched.compute(), single.compute()
    assert a["n_images"] == 6
    for key in a:
        assert a[key] == pytest.approx(b[key], nan_ok=True)


def test_nan_and_invalid_pixels_are_ignored():
    soft = np.full((4, 6), np.nan)
    soft[:, 1:5] = np.random.default_rng(0).random((4, 4))
    gt = np.zeros((4, 6), dtype=bool)
    gt[:2, 1:3] = True
    gt[:, 0] = True  # lies in the NaN band: must not count
    pred = np.ones((4, 6), dtype=bool)
    m = SegmentationMetrics()
    m.update(soft, pred, gt)
    inner = SegmentationMetrics()
    inner.update(soft[:, 1:5], pred[:, 1:5], gt[:, 1:5])
    assert m.compute() == pytest.approx(inner.compute(), nan_ok=True)
    assert m.compute()["pixel_accuracy"] == pytest.approx(4 / 16)
    valid = ~np.isnan(soft)
    v = SegmentationMetrics()
    v.update(None, pred, gt, valid=valid)
    assert v.compute()["pixel_accuracy"] == pytest.approx(4 / 16)


def test_both_classes_mode_needs_unit_interval_maps():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        SegmentationMetrics(ap_mode="both_classes").update(GT * 3.0, GT, GT)
    m = SegmentationMetrics()
    m.update(GT * 3.0, GT, GT)  # foreground mode still scores it; the pooled variant skips it
    assert m.compute()["mean_ap"] == pytest.approx(1.0) and m.ap_both_classes == []
    assert_refused(lambda: SegmentationMetrics().update(None, GT, GT[:3]),
                   "pred_mask (4, 4) and gt_mask (3, 4) must share a shape [*batch, H, W]")
    assert_refused(lambda: SegmentationMetrics(ap_mode="pooled"),
                   "ap_mode must be 'foreground' or 'both_classes', got 'pooled'")


# ------------------------------------------------------------------------------------------ zero-shot segment
def test_zero_shot_segment_by_hand():
    heat = torch.tensor([[-1.0, 0.0, 1.0], [2.0, 3.0, 4.0]])
    # clip -> [0 0 1 2 3 4]; min-max -> [0 0 .25 .5 .75 1]; mean 2.5/6 -> foreground .5, .75, 1
    soft, mask = zero_shot_segment(heat)
    torch.testing.assert_close(soft, torch.tensor([[0.0, 0.0, 0.25], [0.5, 0.75, 1.0]]))
    assert torch.equal(mask, torch.tensor([[False, False, False], [True, True, True]]))
    _, mask_fixed = zero_shot_segment(heat, threshold=0.6)
    assert torch.equal(mask_fixed, torch.tensor([[False, False, False], [False, True, True]]))
    soft_raw, _ = zero_shot_segment(heat, clip_negative=False)
    torch.testing.assert_close(soft_raw, (heat + 1) / 5)


def test_zero_shot_segment_batched_constant_and_nan():
    rng = torch.Generator().manual_seed(0)
    maps = torch.randn(2, 3, 8, 8, generator=rng)
    maps[1, 2] = 7.0  # constant map -> all zeros, no foreground
    soft, mask = zero_shot_segment(maps)
    for i in range(2):
        for j in range(3):
            s1, m1 = zero_shot_segment(maps[i, j])
            torch.testing.assert_close(soft[i, j], s1)
            assert torch.equal(mask[i, j], m1)
    assert torch.equal(soft[1, 2], torch.zeros(8, 8)) and not mask[1, 2].any()
    # NaN pixels are ignored by min/max/mean and stay NaN / background
    with_nan = torch.full((4, 6), float("nan"))
    with_nan[:, 1:5] = maps[0, 0, :4, :4]
    s_nan, m_nan = zero_shot_segment(with_nan)
    s_in, m_in = zero_shot_segment(maps[0, 0, :4, :4])
    torch.testing.assert_close(s_nan[:, 1:5], s_in)
    assert torch.isnan(s_nan[:, [0, 5]]).all() and not m_nan[:, [0, 5]].any()
    assert torch.equal(m_nan[:, 1:5], m_in)


def test_zero_shot_segment_otsu_splits_two_modes():
    rng = np.random.default_rng(0)
    truth = rng.random((16, 16)) < 0.2  # unbalanced, so the mean threshold is not the midpoint
    heat = np.where(truth, 0.8, 0.2) + rng.normal(0, 0.03, (16, 16))
    _, mask = zero_shot_segment(heat, threshold="otsu")
    assert torch.equal(mask, torch.from_numpy(truth))
    assert_refused(lambda: zero_shot_segment(heat, threshold="median"),
                   "threshold must be 'mean', 'otsu' or a float, got 'median'")
