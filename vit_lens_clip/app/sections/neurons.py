"""The second-order neuron lens on shapes-world scenes: selectivity, ablations, texts, segmentation."""

from __future__ import annotations

from vit_lens_clip.app.neurons import NeuronOptions, add_neuron_study
from vit_lens_clip.app.sections.base import ReportContext


class NeuronsSection:
    name, needs, uses, gives, skippable, grad = "neurons", ("images",), (), (), True, False

    def run(self, ctx: ReportContext) -> None:
        config = ctx.config
        if config.images:
            ctx.page.append(("Neurons", "The neuron section runs on the shapes world's labelled scenes only; "
                                        "it was left out because --images was given."))
            return
        options = NeuronOptions(n_reference=config.neuron_images or 3 * config.n_images, n_eval=config.n_images,
                                seed=config.seed, segmentation_images=config.segmentation_images,
                                batch_size=config.batch_size, progress=ctx.progress)
        add_neuron_study(ctx, ctx.loaded, options)
