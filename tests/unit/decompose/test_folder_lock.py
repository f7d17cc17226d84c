"""One writer per folder (decompose/folder_lock.py): a second holder is refused in one line; the lock goes with its
holder, a SIGKILL included; ``folder_locked`` goes on under a lock this process already holds."""

import os
import signal
import time

import pytest

from vit_lens_clip.decompose.folder_lock import FolderBusyError, FolderLock, folder_locked, is_lock_file, lock_name
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


def hold_in_another_process(folder, rank=0) -> int:
    """A forked process that takes ``folder``'s lock and keeps it until it is killed; returns its pid."""
    ready, tell = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child: no clean-up, no return into the test runner
        try:
            os.close(ready)
            FolderLock(folder, "--out", rank).acquire()
            os.write(tell, b"1")
            while True:
                time.sleep(60)
        finally:
            os._exit(1)
    os.close(tell)
    assert os.read(ready, 1) == b"1"
    os.close(ready)
    return pid


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def test_another_process_is_refused_and_its_kill_frees_the_folder(tmp_path):
    out = tmp_path / "out"
    holder = hold_in_another_process(out, rank=2)
    try:
        with pytest.raises(FolderBusyError, match=rf"pid {holder}\)"):
            FolderLock(out, "--out", rank=2).acquire()
        with FolderLock(out, "--out", rank=0):  # rank 0's file is another lock
            pass
    finally:
        kill(holder)
    with FolderLock(out, "--out", rank=2):  # the kernel dropped the killed holder's lock: nothing stale blocks
        pass


def test_folder_locked_goes_on_under_this_processs_own_lock(tmp_path):
    out = tmp_path / "out"
    with FolderLock(out, "--out"):
        with folder_locked(out):  # the command took it already: the library call goes on under it
            pass
        with pytest.raises(FolderBusyError):
            FolderLock(out, "--out").acquire()  # FolderLock itself is not re-entrant
    holder = hold_in_another_process(out)
    try:
        with pytest.raises(FolderBusyError, match="being written by another process"):
            with folder_locked(out):
                pass
    finally:
        kill(holder)
    with folder_locked(out):
        pass
