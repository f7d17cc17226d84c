"""Side-by-side benchmarks: CPU and wall time per call, peak memory, and agreement, measured in one run."""
