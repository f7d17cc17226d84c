"""The exact decomposition of the image embedding (math in fold.py), reducers over datasets, their checkpoints and shard
manifests."""

from vit_lens_clip.decompose.fold import LNFold
from vit_lens_clip.decompose.manifests import merge_manifests
from vit_lens_clip.decompose.parts import Decomposition, DecompositionCapture, decompose
from vit_lens_clip.decompose.reducers import (
    ActivationMeanReducer,
    HeadStackReducer,
    MeanReducer,
    Reducer,
    StackReducer,
    TextScoreReducer,
    load_head_stack,
    run_reducers,
)

__all__ = [
    "LNFold", "Decomposition", "DecompositionCapture", "decompose", "Reducer", "MeanReducer", "StackReducer",
    "ActivationMeanReducer", "HeadStackReducer", "TextScoreReducer", "load_head_stack", "merge_manifests",
    "run_reducers",
]
