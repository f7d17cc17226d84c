"""The exact decomposition of the image embedding (math in fold.py), reducers over datasets, their checkpoints and
the store for parts at rest (store.py, store_writer.py, contributions.py; docs/store.md)."""

from vit_lens_clip.decompose.contributions import HeadContributions, kept_layers
from vit_lens_clip.decompose.fold import LNFold
from vit_lens_clip.decompose.manifests import merge_manifests
from vit_lens_clip.decompose.parts import Decomposition, DecompositionCapture, decompose
from vit_lens_clip.decompose.reducers import (
    ActivationMeanReducer,
    MeanReducer,
    Reducer,
    StackReducer,
    TextScoreReducer,
    run_reducers,
)
from vit_lens_clip.decompose.store import StoredParts, read_manifest
from vit_lens_clip.decompose.store_writer import ShardWriter

__all__ = [
    "LNFold", "Decomposition", "DecompositionCapture", "decompose", "Reducer", "MeanReducer", "StackReducer",
    "ActivationMeanReducer", "TextScoreReducer", "run_reducers", "ShardWriter", "StoredParts", "read_manifest",
    "merge_manifests", "HeadContributions", "kept_layers",
]
