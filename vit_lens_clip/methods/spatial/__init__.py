"""Spatial maps: text heatmaps from the (head, patch) decomposition, baselines in one registry, and the
segmentation benchmark (docs/segmentation.md)."""

from vit_lens_clip.methods.spatial.evaluate import evaluate_segmentation, method_maps
from vit_lens_clip.methods.spatial.heatmaps import (
    class_heatmap,
    heatmap_to_pixels,
    joint_map,
    predict_classes,
    text_heatmap,
)
from vit_lens_clip.methods.spatial.registry import MapMethod

__all__ = ["MapMethod", "class_heatmap", "evaluate_segmentation", "heatmap_to_pixels", "joint_map", "method_maps",
           "predict_classes", "text_heatmap"]
