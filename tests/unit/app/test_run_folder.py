"""app/run_folder.py: a report folder never mixes two runs' files, never deletes or overwrites the user's without
--overwrite (and then names them), and a rerun replaces the previous report only once the new one is whole: a kill
at any step leaves one whole report. The report's inputs are checked before anything is loaded, with one-line
errors."""

import argparse
import json
import os
import shutil

import pytest

from vit_lens_clip.app.run_folder import (
    RECORD,
    REPORT_FILES,
    STAGING_PREFIX,
    ReportFolder,
    check_report_inputs,
    replace_files,
    report_files,
    report_settings,
)
from vit_lens_clip.decompose import checkpoint
from vit_lens_clip.decompose.folder_lock import FolderBusyError, FolderLock
from vit_lens_clip.errors import BadInputError, OutputFolderError
from vit_lens_clip.integrity import sha256_bytes

OLD = {"report.html": b"old page", "results.json": b"{}", "results.csv": b"old rows", "textspan.md": b"old spans"}
NEW = {"report.html": b"new page", "results.json": b"{\"new\": 1}", "results.csv": b"new rows"}


def run(out, settings, files, overwrite=False, writes=REPORT_FILES):
    """A report run that writes ``files``: check, stage, commit."""
    folder = ReportFolder(out, settings, overwrite, writes)
    folder.check()
    with folder:
        for name, data in files.items():
            (folder.staging / name).write_bytes(data)
        folder.commit()


def contents(out):
    """Every file of the folder but the record, the lock and the staging folders (what a killed run left of the
    record's temporary is listed)."""
    return {p.name: p.read_bytes() for p in out.iterdir()
            if p.is_file() and p.name != RECORD and not p.name.startswith((".vit_lens_clip.lock", STAGING_PREFIX))}


def record(out):
    return json.loads((out / RECORD).read_text())


def test_settings_leave_out_path_verbosity_and_device():
    args = argparse.Namespace(out="o", quiet=True, device="cuda", k=3, func=print, model="m")
    assert report_settings(args) == {"k": 3, "model": "m"}
    assert "textspan.md" not in report_files(["textspan"]) and "textspan.md" in report_files(["sae"])


def test_second_run_replaces_its_files_and_keeps_the_users(tmp_path):
    out = tmp_path / "r"
    run(out, {"k": 3}, OLD)
    assert contents(out) == OLD and record(out)["files"] == sorted(OLD)
    assert record(out)["sha256"] == {n: sha256_bytes(b) for n, b in OLD.items()}
    (out / "notes.txt").write_text("mine")
    run(out, {"k": 3}, NEW)  # same settings: the new report replaces the old, textspan.md is not left stale
    assert contents(out) == {**NEW, "notes.txt": b"mine"} and record(out)["files"] == sorted(NEW)
    assert not any(p.name.startswith(STAGING_PREFIX) for p in out.iterdir())
    # other settings: refused unless --overwrite, and then the user's file still stays
    with pytest.raises(OutputFolderError, match="other settings.*none of your files would be replaced"):
        run(out, {"k": 4}, OLD)
    assert contents(out) == {**NEW, "notes.txt": b"mine"}
    run(out, {"k": 4}, {"report.html": b"four"}, overwrite=True)
    assert contents(out) == {"report.html": b"four", "notes.txt": b"mine"}


def test_foreign_folder_refused_naming_the_files_overwrite_would_replace(tmp_path):
    (tmp_path / "data.csv").write_text("x")
    with pytest.raises(OutputFolderError, match=r"holds no previous report.*none of your files would be replaced"):
        run(tmp_path, {}, NEW)
    (tmp_path / "report.html").write_text("my page")
    (tmp_path / "results.csv").write_text("my rows")
    with pytest.raises(OutputFolderError, match=r"it would replace your report.html, results.csv;") as refused:
        run(tmp_path, {}, NEW)
    assert "data.csv" not in str(refused.value)
    assert contents(tmp_path) == {"data.csv": b"x", "report.html": b"my page", "results.csv": b"my rows"}
    run(tmp_path, {}, NEW, overwrite=True)
    assert contents(tmp_path) == {**NEW, "data.csv": b"x"}


def test_an_edited_report_file_is_the_users(tmp_path):
    """A recorded file whose sha256 changed was edited: a rerun neither replaces nor removes it silently."""
    run(tmp_path, {"k": 1}, OLD)
    (tmp_path / "report.html").write_text("annotated by me")
    (tmp_path / "textspan.md").write_text("my notes on the spans")
    with pytest.raises(OutputFolderError, match=r"would replace your report.html \(not written by the previous"):
        run(tmp_path, {"k": 1}, NEW, writes=report_files(["textspan"]))
    run(tmp_path, {"k": 1}, NEW, overwrite=True, writes=report_files(["textspan"]))
    # report.html replaced (--overwrite), textspan.md edited and not written by this run: kept, no longer recorded
    assert contents(tmp_path) == {**NEW, "textspan.md": b"my notes on the spans"}
    assert record(tmp_path)["files"] == sorted(NEW)


def test_a_record_without_digests_from_an_older_version_is_replaced_whole(tmp_path):
    for name, data in OLD.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / RECORD).write_text(json.dumps({"settings": {"k": 1}, "files": sorted(OLD)}))
    run(tmp_path, {"k": 1}, NEW)
    assert contents(tmp_path) == NEW and record(tmp_path)["files"] == sorted(NEW)


def test_a_failed_rerun_leaves_the_previous_report_and_no_staging(tmp_path):
    run(tmp_path, {"k": 1}, OLD)
    before = (tmp_path / RECORD).read_bytes()
    folder = ReportFolder(tmp_path, {"k": 2}, overwrite=True)
    with pytest.raises(KeyboardInterrupt):
        with folder:
            (folder.staging / "report.html").write_bytes(b"half")
            raise KeyboardInterrupt
    assert contents(tmp_path) == OLD and (tmp_path / RECORD).read_bytes() == before
    assert not folder.staging.exists()


def test_a_stale_staging_folder_is_removed_and_a_symlinked_one_is_not_followed(tmp_path):
    out = tmp_path / "r"
    run(out, {"k": 1}, OLD)
    (out / f"{STAGING_PREFIX}999999").mkdir()
    (out / f"{STAGING_PREFIX}999999" / "report.html").write_bytes(b"killed run")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("keep me")
    (out / f"{STAGING_PREFIX}888888").symlink_to(elsewhere)
    run(out, {"k": 1}, NEW)
    assert contents(out) == NEW and (elsewhere / "precious").read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == sorted([*NEW, RECORD, ".vit_lens_clip.lock"])


def test_a_record_naming_files_outside_or_internal_is_refused_untouched(tmp_path):
    run(tmp_path, {"k": 1}, OLD)
    for bad in ["../x", "/etc/passwd", "a/b", RECORD, f"{STAGING_PREFIX}1"]:
        (tmp_path / RECORD).write_text(json.dumps({"settings": {"k": 1}, "files": ["report.html", bad]}))
        with pytest.raises(OutputFolderError, match="not a file of the folder"):
            run(tmp_path, {"k": 1}, NEW)
        assert contents(tmp_path) == OLD
    (tmp_path / RECORD).write_text(json.dumps({"settings": {"k": 1}, "files": ["report.html"], "sha256": [1]}))
    with pytest.raises(OutputFolderError, match="not a report record"):
        run(tmp_path, {"k": 1}, NEW)
    (tmp_path / RECORD).write_text(json.dumps({"settings": {"k": 1}, "files": ["report.html"],
                                                "committing": {"staging": "../elsewhere", "files": []}}))
    with pytest.raises(OutputFolderError, match="not one of the package's"):
        run(tmp_path, {"k": 1}, NEW)


def test_symlinks_and_folders_at_report_names_are_refused(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    target = tmp_path / "target.html"
    target.write_text("keep me")
    (out / "report.html").symlink_to(target)
    with pytest.raises(OutputFolderError, match="report.html is a symlink"):
        run(out, {}, NEW, overwrite=True)
    (out / "report.html").unlink()
    (out / "results.json").mkdir()
    with pytest.raises(OutputFolderError, match="results.json is a folder"):
        run(out, {}, NEW, overwrite=True)
    assert target.read_text() == "keep me"


def test_a_second_writer_is_refused(tmp_path):
    run(tmp_path, {"k": 1}, OLD)
    with FolderLock(tmp_path, "--out"):
        with pytest.raises(FolderBusyError, match="being written by another process"):
            run(tmp_path, {"k": 1}, NEW)
    assert contents(tmp_path) == OLD


def _kill_at(k, out, settings, files, overwrite):
    """In a child process: the run, dying (os._exit: no cleanup runs) right after its k-th write boundary."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        seen = []

        def die(label):
            seen.append(label)
            if len(seen) > k:
                os._exit(9)

        checkpoint.BOUNDARY_HOOK = die
        try:
            run(out, settings, files, overwrite)
        finally:
            os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_kill_at_every_step_of_a_rerun_leaves_one_whole_report(tmp_path):
    """--overwrite rerun with other settings and no textspan, killed after each of its writes: before the commit
    the previous report is whole and byte-identical; after it the next run completes the new one (no stale file)."""
    base = tmp_path / "base"
    run(base, {"k": 1}, OLD)
    (base / "notes.txt").write_bytes(b"mine")
    labels = []
    checkpoint.BOUNDARY_HOOK = labels.append
    try:
        run(shutil.copytree(base, tmp_path / "probe"), {"k": 2}, NEW, overwrite=True)
    finally:
        checkpoint.BOUNDARY_HOOK = None
    committed = labels.index(f"renamed {RECORD}")  # the commit's record is in place: the new report wins
    assert len(labels) > 10 and labels[:committed].count("staged") == 1
    for k in range(len(labels)):
        out = shutil.copytree(base, tmp_path / f"kill{k}")
        assert _kill_at(k, out, {"k": 2}, NEW, True) == 9, labels[k]
        on_disk = {n: b for n, b in contents(out).items() if n != RECORD + ".tmp"}
        if k < committed:
            assert on_disk == {**OLD, "notes.txt": b"mine"}, labels[k]
            assert record(out)["settings"] == {"k": 1}
        else:
            assert all(on_disk[n] in (OLD.get(n), NEW.get(n)) for n in on_disk if n != "notes.txt"), labels[k]
        # the next run (here, only opening the folder) finishes or discards what the killed one left
        with ReportFolder(out, {"k": 2}, overwrite=True):
            pass
        expected = NEW if k >= committed else OLD
        assert contents(out) == {**expected, "notes.txt": b"mine"}, labels[k]
        assert record(out)["files"] == sorted(expected) and "committing" not in record(out), labels[k]
        assert not any(p.name.startswith(STAGING_PREFIX) for p in out.iterdir()), labels[k]


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


def test_replace_files_renames_into_place_and_never_follows_a_link(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    target = tmp_path / "precious"
    target.write_text("keep me")
    (out / "a.md").symlink_to(target)
    (out / f"{STAGING_PREFIX}1").mkdir()  # a killed run's
    (out / "mine.txt").write_text("mine")
    paths = replace_files(out, lambda folder: [(folder / n).write_text(n) for n in ("a.md", "b.json")])
    assert paths == [out / "a.md", out / "b.json"] and target.read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == ["a.md", "b.json", "mine.txt"] and not (out / "a.md").is_symlink()
    (out / "c.html").mkdir()
    with pytest.raises(OutputFolderError, match="c.html is a folder"):
        replace_files(out, lambda folder: (folder / "c.html").write_text("x"))
    assert sorted(p.name for p in out.iterdir()) == ["a.md", "b.json", "c.html", "mine.txt"]
