"""One writer per folder (app/folder_lock.py): a second holder is refused in one line; the lock goes with its holder."""

import os

import pytest

from vit_lens_clip.app.folder_lock import FolderBusyError, FolderLock, is_lock_file, lock_name
from vit_lens_clip.errors import OutputFolderError


def test_a_second_holder_is_refused_until_the_first_lets_go(tmp_path):
    out = tmp_path / "out"
    with FolderLock(out) as first:
        assert out.is_dir() and first.path.read_text().strip() == str(os.getpid())
        with pytest.raises(FolderBusyError, match="being written by another process") as busy:
            FolderLock(out).acquire()  # another open file description: flock refuses it as it would another process
        assert "\n" not in str(busy.value)
    with FolderLock(out):  # released on exit: the next run takes it
        pass


def test_lock_names_per_rank_and_recognised():
    assert lock_name(0) != lock_name(3) and is_lock_file(lock_name(0)) and is_lock_file(lock_name(3))
    assert not is_lock_file("manifest.json") and not is_lock_file(lock_name(0) + ".x")


def test_a_symlink_under_the_locks_name_is_refused(tmp_path):
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("keep")
    (out / lock_name()).symlink_to(victim)
    with pytest.raises(OutputFolderError, match="cannot open its lock file"):
        FolderLock(out).acquire()
    assert victim.read_text() == "keep"
