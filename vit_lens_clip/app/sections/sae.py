"""Sparse-autoencoder features explained with the decomposition: texts, top heads, top images, maps, segmentation.

Runs with ``--sae PATH`` (a SAELens or peer-format folder for a hook of the loaded model) or, on the embedded
model, with the SAE shipped beside it.
"""

from __future__ import annotations

from vit_lens_clip.app.sae import add_sae_features
from vit_lens_clip.app.sections.base import ReportContext
from vit_lens_clip.embedded import EMBEDDED_NAME
from vit_lens_clip.methods.sae.formats import load_sae
from vit_lens_clip.methods.sae.splice import check_compatible


class SAESection:
    name, needs, uses, gives, skippable, grad = "sae", ("dataset",), ("segmentation_maps",), (), True, False

    def run(self, ctx: ReportContext) -> None:
        config, dataset = ctx.config, ctx.values.dataset
        scenes = getattr(dataset, "scenes", None)
        if config.sae is None and ctx.loaded.name != EMBEDDED_NAME:
            ctx.page.append(("SAE features", "No SAE for this model: give one with --sae PATH "
                                             "(a SAELens or ViT-Prisma folder)."))
            return
        if scenes is None:
            ctx.page.append(("SAE features", "The SAE section explains features on the shapes world's labelled "
                                             "scenes; it was left out because --images was given."))
            return
        sae = None
        if config.sae is not None:
            sae = load_sae(config.sae)
            check_compatible(ctx.loaded.model, sae)
        add_sae_features(ctx, ctx.loaded, scenes[:config.n_images], sae=sae,
                         segmentation_images=config.segmentation_images, batch_size=config.batch_size,
                         progress=ctx.progress, seed=config.seed, segmentation_maps=ctx.values.segmentation_maps)
