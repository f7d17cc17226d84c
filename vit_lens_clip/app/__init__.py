"""Application layer: the CLI and its commands (collect, textspan, segment, neurons), the report and its sections, the bench."""
