"""The SAE shipped with the embedded shapes model (its text pool in the shapes world's own words sits with the
world's other adapters in ``vit_lens_clip.datasets``)."""

from __future__ import annotations

import json
from pathlib import Path

from vit_lens_clip.embedded import EMBEDDED_MODEL_DIR
from vit_lens_clip.methods.sae.formats import load_sae_lens
from vit_lens_clip.methods.sae.sae import SparseAutoencoder

SHIPPED_SAE_HOOK = "blocks.4.hook_resid_post"
SHIPPED_SAE_DIR: Path = EMBEDDED_MODEL_DIR.parent / "sae" / SHIPPED_SAE_HOOK


def load_shipped_sae() -> SparseAutoencoder:
    """The TopK SAE trained on the embedded model's ``blocks.4.hook_resid_post`` (SAELens format, offline)."""
    return load_sae_lens(SHIPPED_SAE_DIR)


def shipped_figures() -> dict:
    """Its training figures (explained variance, L0, dead features, zero-shot accuracy with it spliced)."""
    return json.loads((SHIPPED_SAE_DIR / "figures.json").read_text())

