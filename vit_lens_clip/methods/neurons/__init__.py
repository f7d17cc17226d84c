"""The second-order neuron lens (Gandelsman, Efros, Steinhardt, ICLR 2025): neurons of CLIP's MLPs, read through
later heads (docs/neurons.md)."""

from vit_lens_clip.methods.neurons.directions import neuron_directions
from vit_lens_clip.methods.neurons.effects import (
    NeuronEffects,
    SecondOrderReducer,
    SecondOrderStats,
    collect_second_order,
    neuron_vectors,
)
from vit_lens_clip.methods.neurons.omp import omp
from vit_lens_clip.methods.neurons.segmentation import neuron_maps
from vit_lens_clip.methods.neurons.study import NeuronStudy, run_study

__all__ = ["NeuronEffects", "NeuronStudy", "SecondOrderReducer", "SecondOrderStats", "collect_second_order",
           "neuron_directions", "neuron_maps", "neuron_vectors", "omp", "run_study"]
