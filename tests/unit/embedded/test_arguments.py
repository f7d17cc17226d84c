"""embedded/arguments.py: the trainer's parser needs --out, reads name=weight lists and refuses malformed ones."""

import argparse
from pathlib import Path

import pytest

from vit_lens_clip.embedded.arguments import add_train_arguments, build_train_parser, parse_weights


def test_parse_weights():
    assert parse_weights("position=0.4, shape=0.4,") == {"position": 0.4, "shape": 0.4}
    for bad in ("position", "position=x", "a=1=2"):
        with pytest.raises(argparse.ArgumentTypeError, match="name=weight pairs"):
            parse_weights(bad)


def test_parser_defaults_and_errors(capsys):
    parser = build_train_parser("train")
    args = parser.parse_args(["--out", "o", "--sweep-weights", "count=1"])
    assert args.out == Path("o") and args.steps == 3400 and args.sweep_weights == {"count": 1.0}
    assert args.no_sincos_init is False and args.stop_at is None
    for argv in ([], ["--out", "o", "--sweep-weights", "count"], ["--out", "o", "--steps", "many"]):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(argv)
        assert e.value.code == 2
    assert "expected name=weight pairs separated by commas, got 'count'" in capsys.readouterr().err
    # the same options on any parser (the package's own command line adds them to a subcommand)
    other = add_train_arguments(argparse.ArgumentParser())
    assert vars(other.parse_args(["--out", "o"])) == vars(parser.parse_args(["--out", "o"]))
