"""``vit-lens-clip --help`` and every subcommand's ``--help`` are instant: building and using the parser imports
no heavy library (checked by import inspection in a fresh interpreter, not by a wall clock)."""

import subprocess
import sys

from vit_lens_clip.app.config import SECTION_NAMES, SEGMENT_METHODS
from vit_lens_clip.app.sections import SECTIONS
from vit_lens_clip.methods.spatial.evaluate import METHODS

HEAVY = ("torch", "open_clip", "transformers", "transformer_lens", "numpy", "plotly")

CODE = f"""
import argparse, contextlib, io, sys
from vit_lens_clip.app.cli import build_parser, main

parser = build_parser()
commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
assert "train-embedded" in commands, sorted(commands)
for argv in [[]] + [[name] for name in commands]:  # every subcommand, train-embedded included
    with contextlib.redirect_stdout(io.StringIO()) as text:
        try:
            main(argv + ["--help"])  # the console script's entry point
        except SystemExit as done:
            assert done.code == 0, (argv, done.code)
    assert "usage: vit-lens-clip" in text.getvalue(), argv
    if argv == ["train-embedded"]:  # the trainer's own options, from the light module both parsers share
        assert "--sweep-weights" in text.getvalue() and "--max-minutes" in text.getvalue()
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
assert not heavy, heavy
"""


def test_help_imports_no_heavy_library():
    result = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_segment_method_choices_match_the_methods():
    assert SEGMENT_METHODS == tuple(METHODS)


def test_report_section_names_match_the_sections():
    assert SECTION_NAMES == tuple(s.name for s in SECTIONS if s.skippable)


def test_light_collect_options_match_the_shard_writer():
    from vit_lens_clip.app.config import COLLECT_PARTS
    from vit_lens_clip.decompose.store import PART_FIELDS
    from vit_lens_clip.distributed.collection import AUTOCAST_DTYPES

    assert COLLECT_PARTS == tuple(PART_FIELDS)
    assert sorted(AUTOCAST_DTYPES) == ["bf16", "fp16"]
