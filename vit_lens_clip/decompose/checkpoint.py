"""Run folders that know their inputs, and atomic checkpoints.

**Identity.** A run folder records what produced it (``run_identity``): the package version, the model's
name and a sha256 over all its weights, the dataset's identity (``dataset_identity``: file names, sizes,
mtimes and a content hash of a sample of files for image folders; a content hash of the whole tensor for
in-memory images; for other datasets a content hash of a fixed sample of items: the first two, eight evenly
spaced, the last) and the run's settings.
Reusing or resuming a folder whose record differs raises ``RunFolderMismatchError`` naming what differs.

**Atomic writes.** Every file is written to ``<name>.tmp`` and renamed into place (``atomic_write_bytes``); the
temporary name is created anew (``open_new_file``: O_EXCL, O_NOFOLLOW), so a symlink there is never followed.
A checkpoint is a state file with a fresh name plus ``progress.json``, the manifest, renamed into place
*last*; it names the state file and its sha256. Until that rename the previous manifest and the state file
it names stay valid, so a kill at any point resumes from one consistent checkpoint.

``BOUNDARY_HOOK`` is called before and after every write step (tests inject faults through it).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from safetensors.torch import load as load_tensor_bytes
from safetensors.torch import save as save_tensor_bytes
from torch import Tensor, nn

from vit_lens_clip.errors import CorruptFileError, RunFolderMismatchError
from vit_lens_clip.integrity import state_dict_sha256, tensor_sha256  # noqa: F401 (tensor_sha256 re-exported)

BOUNDARY_HOOK: Optional[Callable[[str], None]] = None
RUN_RECORD = "run.json"
PROGRESS = "progress.json"


def _boundary(label: str) -> None:
    if BOUNDARY_HOOK is not None:
        BOUNDARY_HOOK(label)


# ------------------------------------------------------------------------------------------ atomic files


def open_new_file(path: str | Path):
    """``path`` opened for writing as a new file of this process: whatever is there (a file or a symlink left by a
    killed run, or planted) is removed first and the name created with O_EXCL and O_NOFOLLOW, so a symlink is never
    followed and nothing outside the folder is written."""
    path = Path(path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    return os.fdopen(fd, "wb")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through ``path.tmp`` and a rename: readers see the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    _boundary(f"open {path.name}")
    with open_new_file(tmp) as f:
        half = len(data) // 2
        f.write(data[:half])
        f.flush()
        _boundary(f"half-written {tmp.name}")
        f.write(data[half:])
        f.flush()
        os.fsync(f.fileno())
    _boundary(f"rename {tmp.name}")
    os.replace(tmp, path)
    _boundary(f"renamed {path.name}")


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def atomic_save_tensors(path: str | Path, tensors: dict[str, Tensor]) -> str:
    """Save tensors as safetensors atomically; returns the file's sha256."""
    data = save_tensor_bytes({k: v.detach().cpu().contiguous() for k, v in tensors.items()} or {"empty": torch.zeros(0)})
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def remove_file(path: str | Path) -> None:
    _boundary(f"remove {Path(path).name}")
    Path(path).unlink(missing_ok=True)


def load_tensors_checked(path: str | Path, sha256: Optional[str]) -> dict[str, Tensor]:
    """Read a safetensors file and check it against its recorded sha256; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CorruptFileError(f"{path} is missing (listed in its folder's manifest); delete the folder to start over")
    data = path.read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise CorruptFileError(f"{path} does not match the sha256 recorded in its manifest (damaged or edited); "
                               "delete the folder to start over")
    try:
        tensors = load_tensor_bytes(data)
    except Exception as e:  # safetensors' own error types vary across versions
        raise CorruptFileError(f"{path}: unreadable safetensors file ({type(e).__name__}: {e})") from None
    return {k: v for k, v in tensors.items() if k != "empty" or v.numel()}


# ------------------------------------------------------------------------------------------ identity


def package_version() -> str:
    try:
        return importlib.metadata.version("vit_lens_clip")
    except importlib.metadata.PackageNotFoundError:  # not installed (source checkout)
        return "source"


def model_weights_sha256(model: nn.Module) -> str:
    """sha256 over every parameter and buffer of the model (names, dtypes, shapes, bytes)."""
    return state_dict_sha256(model)


def sample_indices(n: int) -> list[int]:
    """The items hashed for a dataset without a cheaper identity: first two, eight evenly spaced, last."""
    picks = {0, 1, n - 1} | {round(i * (n - 1) / 9) for i in range(1, 9)}
    return sorted(i for i in picks if 0 <= i < n)


def _item_digest(item: Any, h) -> None:
    if isinstance(item, dict):
        for k in sorted(item):
            h.update(str(k).encode())
            _item_digest(item[k], h)
    elif torch.is_tensor(item):
        h.update(tensor_sha256(item).encode())
    elif isinstance(item, (list, tuple)):
        for v in item:
            _item_digest(v, h)
    else:
        h.update(repr(item).encode())


def dataset_identity(dataset: Any) -> dict[str, Any]:
    """What identifies a dataset's content: its own ``identity()`` if it has one, else a sample content hash."""
    own = getattr(dataset, "identity", None)
    if callable(own):
        return own()
    n = len(dataset)
    h = hashlib.sha256()
    for i in sample_indices(n):
        h.update(str(i).encode())
        _item_digest(dataset[i], h)
    return {"kind": type(dataset).__name__, "n": n, "sample_sha256": h.hexdigest()}


def run_identity(model: nn.Module, dataset: Any, **settings: Any) -> dict[str, Any]:
    """The record a run folder keeps: package version, model name and weights, data, settings."""
    cfg = getattr(model, "cfg", None)
    return {
        "package_version": package_version(),
        "model": getattr(cfg, "model_name", type(model).__name__),
        "model_weights_sha256": model_weights_sha256(model),
        "data": dataset_identity(dataset),
        "settings": json.loads(json.dumps(settings, default=str)),
    }


def _differences(recorded: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(recorded, dict) and isinstance(current, dict):
        out = []
        for k in sorted(set(recorded) | set(current)):
            out += _differences(recorded.get(k), current.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if recorded == current else [prefix or "record"]


def check_identity(folder: str | Path, recorded: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise ``RunFolderMismatchError`` naming every field where the folder's record differs from this run."""
    diffs = _differences(recorded, current)
    if diffs:
        def short(v: Any) -> str:
            s = json.dumps(v, default=str)
            return s if len(s) <= 40 else s[:37] + "..."

        first = diffs[0]
        get = lambda d: _lookup(d, first)  # noqa: E731
        raise RunFolderMismatchError(
            f"{folder} holds a run with other settings or inputs: {', '.join(diffs)} differ (first: {first} was "
            f"{short(get(recorded))}, now {short(get(current))}); delete the folder or choose another one to start over")


def _lookup(d: Any, dotted: str) -> Any:
    for k in dotted.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def claim_run_folder(folder: str | Path, identity: dict[str, Any]) -> Path:
    """Create ``folder`` (or reuse it if its ``run.json`` matches ``identity``); refuse a mismatching one.

    A non-empty folder without a record is refused too: it may hold another run of an older version.
    """
    folder = Path(folder)
    record = folder / RUN_RECORD
    if record.is_file():
        try:
            recorded = json.loads(record.read_text())
        except json.JSONDecodeError:
            raise CorruptFileError(f"{record} is unreadable; delete {folder} to start over") from None
        check_identity(folder, recorded, identity)
        return folder
    if folder.exists() and not folder.is_dir():
        raise RunFolderMismatchError(f"{folder} is a file, not a run folder")
    if folder.is_dir() and any(p.name != RUN_RECORD for p in folder.iterdir()):
        raise RunFolderMismatchError(f"{folder} is not empty and holds no {RUN_RECORD} record of its inputs "
                                     "(a run of an older version, or other files); delete it or choose another folder")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record, identity)
    return folder


# ------------------------------------------------------------------------------------------ checkpoints


def write_checkpoint(folder: str | Path, state: dict[str, Tensor], info: dict[str, Any]) -> None:
    """Save ``state`` under a fresh name, then rename ``progress.json`` (naming it, with its sha256) into place."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    previous = read_progress(folder)
    name = f"state-{int(info['done']):010d}.safetensors"
    if previous is not None and previous.get("state_file") == name:  # same point again: keep names distinct
        name = f"state-{int(info['done']):010d}-b.safetensors"
    sha = atomic_save_tensors(folder / name, state)
    atomic_write_json(folder / PROGRESS, {**info, "state_file": name, "state_sha256": sha})
    for old in folder.glob("state-*.safetensors"):  # superseded states (and any from a killed write)
        if old.name != name:
            remove_file(old)


def read_progress(folder: str | Path) -> Optional[dict[str, Any]]:
    path = Path(folder) / PROGRESS
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise CorruptFileError(f"{path} is unreadable; delete {folder} to start over") from None


def read_checkpoint(folder: str | Path, identity: dict[str, Any]) -> Optional[tuple[dict[str, Any], dict[str, Tensor]]]:
    """(progress info, state) of the folder's last checkpoint, or None; refuses a checkpoint of other inputs."""
    info = read_progress(folder)
    if info is None:
        return None
    if "identity" not in info or "state_file" not in info:
        raise RunFolderMismatchError(f"{folder} holds a checkpoint of an older version without a record of its inputs; "
                                     "delete it to start over")
    check_identity(folder, info["identity"], identity)
    return info, load_tensors_checked(Path(folder) / info["state_file"], info["state_sha256"])
