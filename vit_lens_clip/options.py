"""Numeric command-line options checked against their ranges, for every command line of the package (the main
one before torch is imported, and the trainer's own): one check, one wording, no torch."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from vit_lens_clip.errors import BadInputError


def option_flag(name: str) -> str:
    """An argparse destination as the user typed it: ``batch_size`` → ``--batch-size``."""
    return "--" + name.replace("_", "-")


def check_ranges(args: Any, minimum: Mapping[str, float] = {}, positive: Sequence[str] = (),
                 fractions: Sequence[str] = ()) -> None:
    """Each option of ``minimum`` at least its value, each of ``positive`` above 0, each of ``fractions`` in [0, 1];
    an option left out (None or absent) passes. A value out of range raises a one-line ``BadInputError``."""
    for name, low in minimum.items():
        value = getattr(args, name, None)
        if value is not None and value < low:
            need = "must not be negative" if low == 0 else f"must be at least {low:g}"
            raise BadInputError(f"{option_flag(name)} {need}; got {value}")
    for name in positive:
        value = getattr(args, name, None)
        if value is not None and not value > 0:
            raise BadInputError(f"{option_flag(name)} must be positive; got {value}")
    for name in fractions:
        value = getattr(args, name, None)
        if value is not None and not 0 <= value <= 1:
            raise BadInputError(f"{option_flag(name)} must lie in [0, 1]; got {value}")
