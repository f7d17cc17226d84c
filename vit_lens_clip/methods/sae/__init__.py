"""Sparse autoencoders on HookedViT: load (SAELens / peer formats), splice, train, and explain features."""

from vit_lens_clip.methods.sae.formats import (
    SAEFormatError,
    from_sae_lens,
    load_peer,
    load_sae,
    load_sae_lens,
    save_sae_lens,
)
from vit_lens_clip.methods.sae.sae import SAEConfig, SparseAutoencoder
from vit_lens_clip.methods.sae.splice import (
    attach_sae,
    attached_saes,
    detach_sae,
    sae_hook_name,
    saes_spliced,
)

__all__ = [
    "SAEConfig", "SparseAutoencoder", "SAEFormatError", "load_sae", "load_sae_lens", "load_peer", "save_sae_lens",
    "from_sae_lens", "attach_sae", "detach_sae", "attached_saes", "sae_hook_name", "saes_spliced",
]
