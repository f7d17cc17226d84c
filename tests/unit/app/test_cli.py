"""app/cli.py and app/config.py: the parser has every command, a report command line becomes a ReportConfig,
bad values exit 2 from argparse, and main() turns a user error into one stderr line and exit status 2."""

import argparse
from pathlib import Path

import pytest

from vit_lens_clip.app.cli import build_parser, main
from vit_lens_clip.app.config import DEFAULT_QUERIES, SECTION_NAMES, ReportConfig

COMMANDS = {"report", "hooks", "bench", "segment", "neurons", "collect", "textspan", "explore", "train-embedded"}


def _subcommands(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_parser_has_every_command():
    assert set(_subcommands(build_parser())) == COMMANDS


def test_report_command_line_becomes_a_config():
    args = build_parser().parse_args(["report", "--out", "r", "--n-images", "7", "--skip", "sae", "neurons"])
    config = ReportConfig.from_args(args)
    assert config.out == Path("r") and config.n_images == 7 and config.skip == ("sae", "neurons")
    assert config.queries == DEFAULT_QUERIES and config.model == ReportConfig().model
    assert set(config.skip) <= set(SECTION_NAMES)


@pytest.mark.parametrize("argv", [["nope"], ["report", "--n-images", "many"], ["report", "--skip", "everything"],
                                  ["collect", "--parts", "nothing"]])
def test_bad_values_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage:") and err.strip().splitlines()[-1].startswith("vit-lens-clip")


def test_user_errors_print_one_line_and_return_2(tmp_path, capsys):
    rc = main(["report", "--out", str(tmp_path / "r"), "--n-images", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("vit-lens-clip report: error: ")
    assert "images must be" in err and "got 0" in err  # the option and the value refused
    rc = main(["report", "--out", str(tmp_path / "r"), "--images", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "image folder not found" in err


def test_a_misspelled_section_names_the_closest_one(capsys):
    from vit_lens_clip.app.config import ReportConfig

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["report", "--skip", "textspn"])
    assert exit_.value.code == 2 and "did you mean 'textspan'?" in capsys.readouterr().err
    with pytest.raises(ValueError, match="did you mean 'heatmaps'"):
        ReportConfig(skip=("heatmap",))
