"""The report's output folder: never mix two runs' files, never delete the user's, never destroy first.

A finished report leaves ``.vit_lens_clip_report.json`` (the record) in ``--out``: its settings, the files it
wrote and their sha256. ``ReportFolder`` is the folder during one run:

1. ``check()`` (read only, before anything is created or loaded) refuses a path that is a file; a non-empty
   folder without a record, or one whose record has other settings, unless ``overwrite``; a file of the user at a
   name the report writes, unless ``overwrite`` (the message names every such file); a symlink or a folder at a
   name the report writes (never written through, even with ``overwrite``); a record that lists anything but plain
   file names of the folder (``../x``, ``/etc/x``, ``a/b``: the record is not the package's, nothing is touched).
2. ``with folder:`` creates the folder, takes its lock (``decompose/folder_lock.py``), completes a commit that a killed
   run left half done (below), removes stale staging folders, checks again, and creates a fresh staging folder
   ``--out/.vit_lens_clip-staging-PID`` (0700, never a symlink) where the run writes every file.
3. ``commit()`` puts the new report in place: it writes the record of the commit first (atomically: a temporary
   name opened with O_EXCL | O_NOFOLLOW, then a rename), then renames each new file over the old one
   (``os.replace``: a symlink at the name would be replaced as a link, never followed), removes the previous
   report's files that this run did not write (no stale ``textspan.*`` after ``--skip textspan``), writes the
   final record the same atomic way, and removes the staging folder. Leaving the ``with`` without a commit (an
   error, Ctrl-C) removes the staging folder: the previous report is untouched.

Until the commit the previous report and its record are untouched, so an interrupted or failed rerun leaves it
whole. The record names a commit in progress (``committing``: the staging folder, the new files, the files to
remove), so a run killed inside the commit's few renames is completed by the next run, before it checks anything;
at every step the record accepts each file's old and new sha256. A recorded file whose content matches neither
(edited since) is the user's again: kept, or with ``overwrite`` replaced when the report writes that name.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from vit_lens_clip.app.preflight import check_sae_folder
from vit_lens_clip.decompose import checkpoint
from vit_lens_clip.decompose.folder_lock import FolderLock, is_lock_file
from vit_lens_clip.errors import BadInputError, OutputFolderError
from vit_lens_clip.integrity import sha256_file
from vit_lens_clip.methods.textspan.pools import load_pool
from vit_lens_clip.validation import check_output_folder

RECORD = ".vit_lens_clip_report.json"
STAGING_PREFIX = ".vit_lens_clip-staging-"
IGNORED_SETTINGS = ("out", "overwrite", "quiet", "func", "debug", "device")
TEXTSPAN_FILES = ("textspan.json", "textspan.md", "textspan.html")
# the files a report writes at the top of its folder
REPORT_FILES = ("report.html", "results.json", "results.csv") + TEXTSPAN_FILES


def report_settings(args: Any) -> dict[str, Any]:
    """The options that shape a report's content (output path, verbosity and device left out)."""
    items = vars(args).items() if not isinstance(args, dict) else args.items()
    return {k: v for k, v in sorted(items) if k not in IGNORED_SETTINGS and not callable(v)}


def report_files(skip: Iterable[str] = ()) -> tuple[str, ...]:
    """The names a report with these ``--skip`` sections may write (``textspan.*`` only when TextSpan runs)."""
    return tuple(n for n in REPORT_FILES if not ("textspan" in tuple(skip) and n in TEXTSPAN_FILES))


def _normalise(settings: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(settings, default=str))


def boundary(label: str) -> None:
    """A point where a test may stop the run (the checkpoints' hook, ``decompose.checkpoint.BOUNDARY_HOOK``)."""
    if checkpoint.BOUNDARY_HOOK is not None:
        checkpoint.BOUNDARY_HOOK(label)


def _is_internal(name: str) -> bool:
    """The package's own bookkeeping in a report folder: the record (and its temporary), locks, staging folders."""
    return name in (RECORD, RECORD + ".tmp") or is_lock_file(name) or name.startswith(STAGING_PREFIX)


def _plain_names(out: Path, names: Any, what: str) -> list[str]:
    """``names`` checked to be plain file names of ``out`` (no ``/``, ``..``, absolute path or internal name)."""
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise OutputFolderError(f"{out / RECORD} is not a report record (its {what} are not a list of names); "
                                "nothing was removed: delete the record or choose another folder")
    bad = [name for name in names if name in ("", ".", "..") or name != Path(name).name or "\\" in name
           or _is_internal(name)]
    if bad:
        raise OutputFolderError(f"{out / RECORD} lists {bad[0]!r}, which is not a file of the folder; nothing was "
                                "removed: delete the record or choose another folder")
    return names


def _read_record(out: Path) -> Optional[dict[str, Any]]:
    """The folder's record, its names validated (None: no record, or not JSON)."""
    path = out / RECORD
    if path.is_symlink() or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict):
        return None
    _plain_names(out, record.get("files", []), "files")
    for key in ("sha256", "previous_sha256"):
        if not isinstance(record.get(key) or {}, dict):
            raise OutputFolderError(f"{path} is not a report record (its {key} is not a table of digests); nothing "
                                    "was removed: delete the record or choose another folder")
    committing = record.get("committing")
    if committing is not None:
        staging = committing.get("staging") if isinstance(committing, dict) else None
        if not (isinstance(staging, str) and staging.startswith(STAGING_PREFIX) and staging == Path(staging).name):
            raise OutputFolderError(f"{path} names a staging folder {staging!r} that is not one of the package's; "
                                    "nothing was removed: delete the record or choose another folder")
        _plain_names(out, committing.get("files", []), "files")
        _plain_names(out, committing.get("remove", []), "files")
    return record


def _digest(record: dict[str, Any], name: str) -> Optional[str]:
    """A file's sha256 in a final record (None: not recorded)."""
    digest = (record.get("sha256") or {}).get(name)
    return digest if isinstance(digest, str) else None


def _digests(record: dict[str, Any], name: str) -> set[str]:
    """The sha256 values a recorded file may have (old and new ones while a commit is in progress)."""
    found = set()
    for key in ("sha256", "previous_sha256"):
        digest = (record.get(key) or {}).get(name)
        if isinstance(digest, str):
            found.add(digest)
    return found


def _is_package_file(out: Path, record: Optional[dict[str, Any]], name: str) -> bool:
    """Whether ``out/name`` is a file the previous report wrote, unedited (a regular file with a recorded sha256;
    a record without digests, from an older version, is trusted for its names)."""
    if record is None or name not in record.get("files", []):
        return False
    path = out / name
    if path.is_symlink() or not path.is_file():
        return False
    committing = record.get("committing") or {}
    if name in committing.get("files", ()) and (out / committing["staging"] / name).is_file():
        return True  # a commit in progress replaces it, whatever it holds now
    digests = _digests(record, name)
    return not digests or sha256_file(path) in digests


def _names(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


@dataclass
class FolderPlan:
    """What a run will do to the folder: ``previous`` the previous report's (unedited) files, ``replaced`` the
    user's files the run will replace (only with overwrite), ``record``: the previous record (None: none)."""

    previous: list[str]
    replaced: list[str]
    record: Optional[dict[str, Any]] = None


def plan_report_folder(out: Path, settings: dict[str, Any], overwrite: bool, writes: Iterable[str]) -> FolderPlan:
    """Check ``out`` for a report with ``settings`` writing ``writes`` (read only); refuses in one line."""
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"--out {out} is a file, not a folder")
    if not out.exists():
        return FolderPlan([], [])
    record = _read_record(out)
    present = sorted(p.name for p in out.iterdir() if not _is_internal(p.name))
    previous = [name for name in present if _is_package_file(out, record, name)]
    users = [name for name in present if name not in previous]
    writes = tuple(writes)
    odd = [name for name in writes if (out / name).is_symlink() or (out / name).is_dir()]
    if odd:
        kind = "a symlink" if (out / odd[0]).is_symlink() else "a folder"
        raise OutputFolderError(f"--out {out}: {odd[0]} is {kind}; the report never writes through one (remove it, "
                                "or choose another folder)")
    replaced = [name for name in users if name in writes]
    would = (f"it would replace your {_names(replaced)}" if replaced else "none of your files would be replaced")
    if not overwrite:
        if users and record is None:
            raise OutputFolderError(f"--out {out} is not empty and holds no previous report; choose an empty folder, "
                                    f"or pass --overwrite to write the report there ({would}; your other files are "
                                    "kept)")
        if record is not None and record.get("settings") != _normalise(settings):
            raise OutputFolderError(f"--out {out} holds a report with other settings; choose another folder, or pass "
                                    f"--overwrite to replace that report ({would}; files the report did not write "
                                    "are kept)")
        if replaced:
            raise OutputFolderError(f"--out {out}: this report would replace your {_names(replaced)} (not written by "
                                    "the previous report, or edited since); pass --overwrite to replace them, or move "
                                    "them away")
    return FolderPlan(previous, replaced, record)


@dataclass
class ReportFolder:
    """``--out`` during one report run: ``check()``, then ``with folder:`` write into ``folder.staging`` and
    ``folder.commit()`` (module docstring)."""

    out: Path
    settings: dict[str, Any]
    overwrite: bool = False
    writes: tuple[str, ...] = REPORT_FILES
    staging: Optional[Path] = None
    committed: bool = False
    _lock: Optional[FolderLock] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.writes = tuple(self.writes)

    def check(self) -> FolderPlan:
        """Refuse now (nothing created) what the run would refuse later."""
        return plan_report_folder(self.out, self.settings, self.overwrite, self.writes)

    def __enter__(self) -> "ReportFolder":
        self.check()
        check_output_folder(self.out, "--out")
        self._lock = FolderLock(self.out, "--out").acquire()
        try:
            record = _read_record(self.out)
            if record is not None and record.get("committing"):
                _apply_commit(self.out, record)  # a run killed inside its commit: finish it first
            for entry in self.out.iterdir():  # what killed runs left (we hold the lock: none of it is live)
                if entry.name.startswith(STAGING_PREFIX) or entry.name == RECORD + ".tmp":
                    _remove(entry)
            self.check()
            self.staging = self.out / f"{STAGING_PREFIX}{os.getpid()}"
            os.mkdir(self.staging, 0o700)
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if not self.committed and self.staging is not None and self.staging.exists():
                _remove(self.staging)  # a failed or interrupted run: the previous report stays as it was
        finally:
            if self._lock is not None:
                self._lock.release()

    def commit(self) -> Path:
        """Put the staged files in place of the previous report's (see the module docstring); returns the record."""
        assert self.staging is not None, "commit() inside `with folder:`"
        plan = self.check()
        new = sorted(p.name for p in self.staging.iterdir())
        odd = [name for name in new if (self.staging / name).is_symlink() or not (self.staging / name).is_file()]
        if odd:
            raise RuntimeError(f"the report staged {odd[0]!r}, which is not a plain file")
        users = [name for name in new if name not in self.writes and (self.out / name).exists()
                 and name not in plan.previous]
        if users and not self.overwrite:  # a name no check above knew the report writes
            raise OutputFolderError(f"--out {self.out}: this report would replace your {_names(users)}; pass "
                                    "--overwrite to replace them, or move them away (the previous report is kept)")
        old = plan.record or {}
        stale = [name for name in plan.previous if name not in new]
        record = {  # the commit's intent: the next run completes it if this one is killed before the end
            "settings": _normalise(self.settings),
            "files": sorted(set(new) | set(stale)),
            # (a record of an older version has no digests: its files' present ones, checked to be its files above)
            "sha256": {**{n: _digest(old, n) or sha256_file(self.out / n) for n in stale},
                       **{n: sha256_file(self.staging / n) for n in new}},
            "previous_sha256": {n: _digest(old, n) or sha256_file(self.out / n) for n in plan.previous if n in new},
            "committing": {"staging": self.staging.name, "files": new, "remove": stale},
        }
        boundary("staged")
        checkpoint.atomic_write_json(self.out / RECORD, record)
        _apply_commit(self.out, record)
        self.committed = True
        return self.out / RECORD


def _apply_commit(out: Path, record: dict[str, Any]) -> None:
    """Carry out the commit ``record`` describes (again, after a kill, is safe): rename each staged file into
    place, remove the previous report's stale files, write the final record, remove the staging folder."""
    committing = record["committing"]
    staging = out / committing["staging"]
    new, stale = committing.get("files", []), committing.get("remove", [])
    for name in new:
        source = staging / name
        if not staging.is_symlink() and source.is_file() and not source.is_symlink():
            os.replace(source, out / name)
            boundary(f"renamed {name}")
    for name in stale:
        path = out / name
        if path.is_file() and not path.is_symlink() and sha256_file(path) in _digests(record, name):
            path.unlink()
            boundary(f"removed {name}")
    digests = record.get("sha256") or {}
    files = [n for n in new if (out / n).is_file() and not (out / n).is_symlink()
             and sha256_file(out / n) == digests.get(n)]
    checkpoint.atomic_write_json(out / RECORD, {"settings": record["settings"], "files": files,
                                                "sha256": {n: digests[n] for n in files}})
    if staging.exists() or staging.is_symlink():
        _remove(staging)
    boundary("staging removed")


def replace_files(out: Path, write: Callable[[Path], object]) -> list[Path]:
    """Files that ``write(folder)`` writes, put into ``out`` without writing through anything already there: they
    are written into a fresh staging folder inside ``out``, then renamed over their names one by one
    (``os.replace``: a symlink at a name is replaced as a link, its target untouched). Staging folders of killed
    runs are removed first. The caller holds ``out``'s lock (``textspan --out``)."""
    for entry in out.iterdir():
        if entry.name.startswith(STAGING_PREFIX):
            _remove(entry)
    staging = out / f"{STAGING_PREFIX}{os.getpid()}"
    os.mkdir(staging, 0o700)
    try:
        write(staging)
        names = sorted(p.name for p in staging.iterdir())
        odd = [n for n in names if (out / n).is_dir() and not (out / n).is_symlink()]
        if odd:
            raise OutputFolderError(f"--out {out}: {odd[0]} is a folder; move it away, or choose another folder")
        for name in names:
            os.replace(staging / name, out / name)
    finally:
        _remove(staging)
    return [out / name for name in names]


def _remove(path: Path) -> None:
    """Remove a staging folder of the package; a symlink is removed as a link (its target is never touched)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)


def check_report_inputs(args: Any) -> None:
    """Cheap validation of the report's options before anything is loaded (one-line errors)."""
    for name in ("n_images", "last_layers", "k", "batch_size"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise BadInputError(f"--{name.replace('_', '-')} must be at least 1; got {value}")
    for name in ("segmentation_images", "spurious_images"):
        value = getattr(args, name, None)
        if value is not None and value < 0:
            raise BadInputError(f"--{name.replace('_', '-')} must not be negative; got {value}")
    images = getattr(args, "images", None)
    source = getattr(args, "source", None)
    if source:
        if images:
            raise BadInputError("--from DIR reads a collection folder in place of images; drop --images")
        if not (Path(source) / "collection.json").is_file():
            raise FileNotFoundError(f"--from {source} is not a collection folder (no collection.json); run "
                                    "`vit-lens-clip collect` first")
    if images and not Path(images).is_dir():
        raise FileNotFoundError(f"image folder not found: --images {images}")
    classes = getattr(args, "classes", None)
    if classes:
        path = Path(classes)
        if not path.is_file():
            raise FileNotFoundError(f"--classes {classes}: no such file")
        try:
            lines = [l for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
        except UnicodeDecodeError:
            raise BadInputError(f"--classes {classes} is not a UTF-8 text file") from None
        if not lines:
            raise BadInputError(f"--classes {classes} is empty: give one class name per line")
    if "sae" not in (getattr(args, "skip", None) or ()):
        check_sae_folder(getattr(args, "sae", None))  # not only when the SAE section's turn comes, after the others
    if getattr(args, "texts", None) and "textspan" not in (getattr(args, "skip", None) or ()):
        try:
            load_pool(args.texts)  # a missing or empty --texts file fails now, not after the decomposition
        except UnicodeDecodeError:
            raise BadInputError(f"--texts {args.texts} is not a UTF-8 text file") from None
