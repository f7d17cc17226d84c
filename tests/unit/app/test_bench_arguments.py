"""app/benchmarks/arguments.py: the bench's options parse as documented, refuse what they do not list, are the
same in ``vit-lens-clip bench`` and ``python -m vit_lens_clip.app.bench``, and every TextSpan size is a valid
call of the bench's TextSpan rows. The module stays argparse-only (the CLI parser must be cheap to build)."""

from __future__ import annotations

import argparse
import ast
import inspect
from pathlib import Path

import pytest

from vit_lens_clip.app.benchmarks import arguments
from vit_lens_clip.app.benchmarks.arguments import HEADLIKE_HEADS, TEXTSPAN_SIZES, add_bench_arguments


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults():
    args = parse()
    assert args.suite == "default" and args.textspan_size == "paper" and args.textspan_data == "both"
    assert args.repeats == 3 and args.threads == 1 and args.device is None and args.json is None
    assert not (args.no_naive or args.heatmaps or args.neurons or args.textspan)
    assert args.precisions.split(",") == ["fp32", "fp16", "bf16"]


def test_values_are_typed():
    args = parse("--suite", "full", "--batch-size", "4", "--repeats", "5", "--max-memory", "0.5",
                 "--textspan", "--textspan-size", "tiny", "--json", "out.json", "--no-naive")
    assert (args.suite, args.batch_size, args.repeats, args.max_memory) == ("full", 4, 5, 0.5)
    assert isinstance(args.batch_size, int) and isinstance(args.max_memory, float)
    assert args.textspan and args.no_naive and args.textspan_size == "tiny" and args.json == "out.json"


@pytest.mark.parametrize("argv", [("--suite", "fast"), ("--textspan-size", "huge"), ("--textspan-data", "real"),
                                  ("--repeats", "two"), ("--batch-size", "1.5")])
def test_unlisted_values_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as caught:
        parse(*argv)
    assert caught.value.code == 2
    assert "invalid" in capsys.readouterr().err


def test_the_textspan_size_choices_are_the_table():
    assert parse("--textspan-size", "quick").textspan_size == "quick"
    for size in TEXTSPAN_SIZES:
        parse("--textspan-size", size)


def test_every_textspan_size_is_a_valid_textspan_rows_call():
    from vit_lens_clip.app.benchmarks.suites import textspan_rows

    accepted = set(inspect.signature(textspan_rows).parameters)
    default_rank = inspect.signature(textspan_rows).parameters["rank"].default
    for name, size in TEXTSPAN_SIZES.items():
        assert set(size) <= accepted, name
        assert {"n_heads", "n_images", "n_texts", "d_out", "k"} <= set(size), name
        assert all(isinstance(v, int) and v > 0 for v in size.values()), name
        # TextSpan picks k of the texts, each removing one direction of d_out, from a rank-`rank` basis
        assert size["k"] <= min(size["n_texts"], size["d_out"], size.get("rank", default_rank)), name
    assert HEADLIKE_HEADS >= 1


def test_the_cli_and_the_module_share_the_options():
    from vit_lens_clip.app.cli import build_parser

    argv = ["--suite", "textspan", "--textspan-size", "tiny", "--threads", "2"]
    via_cli = vars(build_parser().parse_args(["bench", *argv]))
    via_module = vars(parse(*argv))
    assert {k: via_cli[k] for k in via_module} == via_module


def test_the_module_imports_only_argparse():
    tree = ast.parse(Path(arguments.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported == {"__future__", "argparse"}
