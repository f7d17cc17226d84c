"""Store folders (docs/store.md) of one run kind, and merging several into one manifest.

A folder's *run kind* is what must agree for its rows to sit in one table with another folder's rows:

* the kept ``layers`` of its manifest;
* its ``identity`` when the writer recorded one (``collect`` records model, dataset, parts and settings);
* the tensors of its shards: names (the parts), dtypes and per-row shapes (kept layers × heads × width),
  read from the first shard's safetensors header.

``merge_manifests`` refuses, in one line naming the first difference, folders of different run kinds,
unfinished folders and folders whose shard files are gone. Nothing is copied: the merged manifest references
the folders' shard files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors import safe_open

from vit_lens_clip.decompose import checkpoint as ckpt_io
from vit_lens_clip.decompose.store import MANIFEST, read_manifest


def shard_tensors(folder: str | Path, manifest: dict[str, Any]) -> dict[str, tuple[str, list[int]]]:
    """name -> (dtype, shape without the row axis) of the first shard's tensors ({} for a folder without shards)."""
    if not manifest["shards"]:
        return {}
    with safe_open(str(Path(folder) / manifest["shards"][0]["file"]), framework="pt") as f:
        out = {}
        for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
            piece = f.get_slice(name)
            out[name] = (str(piece.get_dtype()), list(piece.get_shape())[1:])
        return out


def run_kind(folder: str | Path, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run kind of a finished shard folder: layers, identity (None if not recorded), shard tensors."""
    manifest = manifest if manifest is not None else read_manifest(folder)
    return {"layers": manifest["layers"], "identity": manifest.get("identity"),
            "tensors": shard_tensors(folder, manifest)}


def kind_difference(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """The first way run kind ``b`` differs from ``a``, in words (None when they agree)."""
    if a["layers"] != b["layers"]:
        return f"layers {b['layers']} (not {a['layers']})"
    ia, ib = a["identity"], b["identity"]
    if (ia is None) != (ib is None):
        return "no recorded run identity" if ib is None else "a recorded run identity (the other has none)"
    if ia is not None:
        first = ["model", "dataset", "parts"]  # the most telling difference first
        for key in first + sorted((set(ia) | set(ib)) - set(first)):
            if ia.get(key) != ib.get(key):
                return f"a different {key} ({ib.get(key)!r}, not {ia.get(key)!r})"
    ta, tb = a["tensors"], b["tensors"]
    if ta and tb:  # a folder without shards holds no rows to disagree with
        if set(ta) != set(tb):
            return f"other tensors {sorted(tb)} (not {sorted(ta)}): other parts"
        for name in sorted(ta):
            if ta[name] != tb[name]:
                return (f"{name} of dtype {tb[name][0]} and row shape {tb[name][1]} (not {ta[name][0]} "
                        f"{ta[name][1]}): another model or storage")
    return None


def check_same_kind(folders: Sequence[str | Path], manifests: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The common run kind of ``folders``; one-line ValueError naming the first folder that differs."""
    if not folders:
        raise ValueError("no shard folders to merge")
    manifests = manifests if manifests is not None else [read_manifest(d) for d in folders]
    kinds = [run_kind(d, m) for d, m in zip(folders, manifests)]
    for folder, kind in zip(folders[1:], kinds[1:]):
        diff = kind_difference(kinds[0], kind)
        if diff:
            raise ValueError(f"cannot merge {folder} with {folders[0]}: it holds {diff}")
    return kinds[0]


def merge_manifests(dirs: Sequence[str | Path], out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Combine finished store folders of one run kind (e.g. one per process) into ``out_dir/manifest.json``.

    Rows keep the order of ``dirs``, then of each folder's shards; files are referenced, not copied. ``extra``
    fields (e.g. ``collect``'s image count) are added to the merged manifest.
    """
    dirs = [Path(d) for d in dirs]
    manifests = [read_manifest(d) for d in dirs]
    kind = check_same_kind(dirs, manifests)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = [{**s, "file": os.path.relpath(d / s["file"], out_dir)} for d, m in zip(dirs, manifests) for s in m["shards"]]
    merged: dict[str, Any] = {**(extra or {}), "layers": kind["layers"], "shards": shards, "complete": True}
    if kind["identity"] is not None:
        merged["identity"] = kind["identity"]
    ckpt_io.atomic_write_json(out_dir / MANIFEST, merged)
    return out_dir
