"""app/run_folder.py: a report folder never mixes two runs' files and never deletes the user's; the report's
inputs are checked before anything is loaded, with one-line errors."""

import argparse

import pytest

from vit_lens_clip.app.run_folder import (
    RECORD,
    check_report_inputs,
    finish_report_folder,
    prepare_report_folder,
    report_settings,
)
from vit_lens_clip.errors import BadInputError, OutputFolderError


def test_settings_leave_out_path_verbosity_and_device():
    args = argparse.Namespace(out="o", quiet=True, device="cuda", k=3, func=print, model="m")
    assert report_settings(args) == {"k": 3, "model": "m"}


def test_second_run_replaces_its_files_and_keeps_the_users(tmp_path):
    out = tmp_path / "r"
    settings = {"k": 3}
    folder, kept = prepare_report_folder(out, settings)
    assert kept == [] and folder.is_dir()
    (out / "report.html").write_text("one")
    finish_report_folder(out, settings, kept)
    (out / "notes.txt").write_text("mine")
    # same settings: the previous report's files are removed, the user's file kept
    _, kept = prepare_report_folder(out, settings)
    assert kept == ["notes.txt"] and not (out / "report.html").exists() and (out / "notes.txt").read_text() == "mine"
    (out / "report.html").write_text("two")
    finish_report_folder(out, settings, kept)
    # other settings: refused unless --overwrite, and then the user's file still stays
    with pytest.raises(OutputFolderError, match="other settings"):
        prepare_report_folder(out, {"k": 4})
    _, kept = prepare_report_folder(out, {"k": 4}, overwrite=True)
    assert (out / "notes.txt").exists() and not (out / "report.html").exists() and not (out / RECORD).exists()


def test_foreign_folder_refused(tmp_path):
    (tmp_path / "data.csv").write_text("x")
    with pytest.raises(OutputFolderError, match="holds no previous report"):
        prepare_report_folder(tmp_path, {})
    assert (tmp_path / "data.csv").exists()


def test_inputs_checked_with_one_line_errors(tmp_path):
    def args(**kw):
        return argparse.Namespace(**{"n_images": 5, "texts": None, **kw})

    check_report_inputs(args())
    for kw, error, words in [({"k": 0}, BadInputError, "--k must be at least 1"),
                             ({"spurious_images": -1}, BadInputError, "--spurious-images must not be negative"),
                             ({"images": str(tmp_path / "none")}, FileNotFoundError, "image folder not found"),
                             ({"source": str(tmp_path)}, FileNotFoundError, "not a collection folder"),
                             ({"classes": str(tmp_path / "none.txt")}, FileNotFoundError, "no such file")]:
        with pytest.raises(error, match=words) as caught:
            check_report_inputs(args(**kw))
        assert "\n" not in str(caught.value)
    empty = tmp_path / "classes.txt"
    empty.write_text("\n \n")
    with pytest.raises(BadInputError, match="is empty"):
        check_report_inputs(args(classes=str(empty)))
