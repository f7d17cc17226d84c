"""The report's output folder: never mix two runs' files, never delete the user's.

A finished report leaves ``.vit_lens_clip_report.json`` in ``--out``: its settings and the files it wrote.
``prepare_report_folder`` runs before any heavy work and

* creates a missing folder; refuses a path that is a file or a folder it cannot write to;
* accepts an empty folder, or one whose record has the same settings (the rerun replaces that report);
* refuses any other non-empty folder unless ``overwrite``; with it, removes the files a previous report
  recorded (user files stay).

In every accepted case the files the previous report recorded are removed first, so no stale ``textspan.*``
survives beside the new report. ``finish_report_folder`` writes the record after the report is complete.

Before anything is deleted the record is validated: every path it lists must be a plain file name inside the
folder (no ``/``, ``..`` or absolute path), else the folder is refused and nothing is touched; a recorded file
whose content no longer has the sha256 the record gives was edited since, and is kept as the user's. Symlinks are
never followed for writing: a symlink at a name the report writes (``report.html`` -> elsewhere) is refused, a
recorded one is removed as a link (its target untouched), and the record is written through a fresh temporary
name (O_EXCL, O_NOFOLLOW) and renamed into place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from vit_lens_clip.decompose.checkpoint import open_new_file
from vit_lens_clip.errors import BadInputError, OutputFolderError
from vit_lens_clip.integrity import sha256_file
from vit_lens_clip.methods.textspan.pools import load_pool
from vit_lens_clip.validation import check_output_folder

RECORD = ".vit_lens_clip_report.json"
IGNORED_SETTINGS = ("out", "overwrite", "quiet", "func", "debug", "device")
# the files a report writes at the top of its folder (never written through a symlink)
REPORT_FILES = ("report.html", "results.json", "results.csv", "textspan.json", "textspan.md", "textspan.html")


def report_settings(args: Any) -> dict[str, Any]:
    """The options that shape a report's content (output path, verbosity and device left out)."""
    items = vars(args).items() if not isinstance(args, dict) else args.items()
    return {k: v for k, v in sorted(items) if k not in IGNORED_SETTINGS and not callable(v)}


def _normalise(settings: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(settings, default=str))


def prepare_report_folder(out: str | Path, settings: dict[str, Any], overwrite: bool = False) -> tuple[Path, list[str]]:
    """Make ``out`` ready for a new report; returns (folder, names of the files that were there before, kept)."""
    out = Path(out)
    check_output_folder(out, "--out")
    record_path = out / RECORD
    record: dict[str, Any] | None = None
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text())
        except json.JSONDecodeError:
            record = None
    written = _recorded_files(out, record)
    present = sorted(p.name for p in out.iterdir() if p.name != RECORD)
    foreign = [name for name in present if name not in written]
    same = record is not None and record.get("settings") == _normalise(settings)
    if present and not overwrite:
        if record is None:
            raise OutputFolderError(f"--out {out} is not empty and holds no previous report; choose an empty folder or "
                                    "pass --overwrite (your files there are kept)")
        if not same:
            raise OutputFolderError(f"--out {out} holds a report with other settings; choose another folder or pass "
                                    "--overwrite to replace it (files the report did not write are kept)")
    digests = (record or {}).get("sha256") or {}
    edited = [name for name in sorted(written) if (out / name).is_file() and not (out / name).is_symlink()
              and name in digests and sha256_file(out / name) != digests[name]]
    for name in sorted(written - set(edited)):  # the previous report's files: replaced by this run, never left stale
        path = out / name
        if path.is_symlink() or path.is_file():
            path.unlink()  # a symlink is removed as a link: its target is never touched
    linked = [name for name in REPORT_FILES if (out / name).is_symlink()]
    if linked:
        raise OutputFolderError(f"--out {out}: {linked[0]} is a symlink; the report never writes through one "
                                "(remove it, or choose another folder)")
    record_path.unlink(missing_ok=True)
    return out, sorted(set(foreign) | set(edited))


def _recorded_files(out: Path, record: dict[str, Any] | None) -> set[str]:
    """The file names a previous report recorded, each checked to be a plain name inside ``out``; a record that
    lists anything else (``../x``, ``/etc/x``, ``a/b``) is not the package's, and the folder is refused untouched."""
    if record is None:
        return set()
    files = record.get("files", [])
    if not isinstance(files, list) or not all(isinstance(name, str) for name in files):
        raise OutputFolderError(f"{out / RECORD} is not a report record (its files are not a list of names); "
                                "nothing was removed: delete the record or choose another folder")
    bad = [name for name in files if name in ("", ".", "..") or name != Path(name).name or "\\" in name
           or name.startswith(RECORD)]
    if bad:
        raise OutputFolderError(f"{out / RECORD} lists {bad[0]!r}, which is not a file of the folder; nothing was "
                                "removed: delete the record or choose another folder")
    return set(files)


def finish_report_folder(out: str | Path, settings: dict[str, Any], kept: Iterable[str]) -> Path:
    """Record the settings and the files this report wrote (everything in ``out`` but the kept user files)."""
    out = Path(out)
    kept = set(kept)
    files = sorted(p.name for p in out.iterdir() if p.name not in (RECORD, RECORD + ".tmp") and p.name not in kept)
    digests = {name: sha256_file(out / name) for name in files if (out / name).is_file() and not (out / name).is_symlink()}
    tmp = out / (RECORD + ".tmp")
    with open_new_file(tmp) as f:  # never through a symlink planted at the temporary name
        f.write(json.dumps({"settings": _normalise(settings), "files": files, "sha256": digests}, indent=1).encode())
    os.replace(tmp, out / RECORD)
    return out / RECORD


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
    if getattr(args, "texts", None) and "textspan" not in (getattr(args, "skip", None) or ()):
        try:
            load_pool(args.texts)  # a missing or empty --texts file fails now, not after the decomposition
        except UnicodeDecodeError:
            raise BadInputError(f"--texts {args.texts} is not a UTF-8 text file") from None
