"""The second-order neuron lens (Gandelsman, Efros, Steinhardt, ICLR 2025): neurons of CLIP's MLPs, read through later heads."""
