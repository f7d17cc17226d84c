"""The explore command: its options, and the datasets a collection folder's fingerprint reopens."""

from __future__ import annotations

import argparse

import pytest

from vit_lens_clip.app.cli import build_parser
from vit_lens_clip.app.explore import _queries, reopen_dataset
from vit_lens_clip.app.explore_options import add_explore_arguments


def test_explore_is_a_command_with_its_options():
    args = build_parser().parse_args(["explore", "folder", "--out", "site", "--examples", "4"])
    assert (args.source, args.out, args.examples, args.textspan_k, args.pool) == ("folder", "site", 4, 3, "descriptions")
    assert not args.bottom and build_parser().parse_args(["explore", "folder", "--out", "site", "--bottom"]).bottom
    assert args.serve is None
    assert build_parser().parse_args(["explore", "folder", "--out", "site", "--serve"]).serve == 8765
    assert build_parser().parse_args(["explore", "folder", "--out", "site", "--serve", "9001"]).serve == 9001
    parser = argparse.ArgumentParser()
    add_explore_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["folder", "--out", "site", "--examples", "0"])


def test_reopen_dataset_rerenders_shapes_and_rereads_folders(tmp_path):
    def identity(x):
        return x

    shapes = reopen_dataset("shapes:n=5,seed=3", identity)
    assert len(shapes) == 5 and shapes.seed == 3
    assert reopen_dataset("wds:n=3:abc", identity) is None
    assert reopen_dataset(f"folder:{tmp_path / 'gone'}:n=1:abcd", identity) is None


def test_queries_come_from_a_list_or_a_file(tmp_path):
    assert _queries(None) == [] and _queries("a red thing; ;two cats") == ["a red thing", "two cats"]
    (tmp_path / "q.txt").write_text("vermilion\n\n  a vermilion disc \n")
    assert _queries(str(tmp_path / "q.txt")) == ["vermilion", "a vermilion disc"]
