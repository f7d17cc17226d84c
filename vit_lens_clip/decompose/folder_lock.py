"""One writer per output folder: an advisory ``fcntl.flock`` on a lock file inside the folder, held for the whole run.

The lock belongs to the open file, so the kernel drops it when the process ends in any way (SIGKILL included):
a killed run never leaves a lock that blocks its resume. The lock file itself stays in the folder (removing it
would let two processes lock two different files); it holds the pid of the last holder, for the message. A
second process asking for a held lock is refused at once with ``FolderBusyError`` (one line, exit status 2).

Each rank of a torchrun job locks its own file (``LOCK_NAME`` for rank 0, ``LOCK_NAME.RANK`` for the others),
so a second job on the same folder is refused on every rank. Where ``fcntl`` does not exist (Windows) the lock
is a no-op.

``folder_locked`` is the form for library functions that write a folder (``collect_on_rank``): it takes the lock,
unless this process already holds it (the command that called it took it first).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Optional

from vit_lens_clip.errors import OutputFolderError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".vit_lens_clip.lock"
_HELD: set[str] = set()  # the lock files this process holds (real paths)


class FolderBusyError(OutputFolderError):
    """Another process holds the folder's lock (it is writing there now)."""


def lock_name(rank: int = 0) -> str:
    return LOCK_NAME if rank == 0 else f"{LOCK_NAME}.{rank}"


def is_lock_file(name: str) -> bool:
    """Whether a file name in an output folder is one of the package's lock files."""
    return name == LOCK_NAME or (name.startswith(LOCK_NAME + ".") and name[len(LOCK_NAME) + 1:].isdigit())


class FolderLock:
    """``with FolderLock(folder, "--out"):`` holds ``folder``'s lock (creating the folder) or raises FolderBusyError."""

    def __init__(self, folder: str | Path, label: str = "--out", rank: int = 0):
        self.folder, self.label = Path(folder), label
        self.path = self.folder / lock_name(rank)
        self.fd: Optional[int] = None

    def acquire(self) -> "FolderLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as e:  # a symlink planted under the lock's name is refused, not followed
            raise OutputFolderError(f"{self.label} {self.folder}: cannot open its lock file {self.path.name} "
                                    f"({e.strerror or e})") from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise FolderBusyError(f"{self.label} {self.folder} is being written by another process (pid {holder}); "
                                      "wait for it to finish, or choose another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        _HELD.add(_key(self.path))
        return self

    def release(self) -> None:
        if self.fd is not None:
            _HELD.discard(_key(self.path))
            if fcntl is not None:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _key(path: Path) -> str:
    return os.path.realpath(path)


@contextlib.contextmanager
def folder_locked(folder: str | Path, label: str = "out", rank: int = 0) -> Iterator[None]:
    """Hold ``folder``'s lock (rank ``rank``'s file) for the block, or go on under the lock this process already
    holds there; another process's lock raises ``FolderBusyError``."""
    if _key(Path(folder) / lock_name(rank)) in _HELD:
        yield
        return
    with FolderLock(folder, label, rank):
        yield
