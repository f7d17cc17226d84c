"""Application layer: the CLI, the report and its sections, the bench."""
