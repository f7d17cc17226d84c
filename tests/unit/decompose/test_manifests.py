"""merge_manifests joins shard folders of one run kind and refuses, in one line, folders of another model,
dataset, parts, layers or storage, unfinished folders and folders whose shard files are gone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vit_lens_clip.decompose import StoredParts, merge_manifests

IDENTITY = {"model": "embedded|abc|fp32", "dataset": "shapes:n=10,seed=0", "parts": ["heads", "embed"], "n": 10,
            "layers": [4, 5], "batch_size": 4, "normalize": True, "store_dtype": "fp32", "autocast": None}


def shard_folder(folder: Path, start: int, n: int = 3, layers=(4, 5), identity=IDENTITY, heads: int = 4,
                 width: int = 8, dtype=torch.float32, parts=("heads", "embed"), complete: bool = True) -> Path:
    folder.mkdir(parents=True)
    rows = {"embedding": torch.randn(n, width), "indices": torch.arange(start, start + n)}
    if "heads" in parts:
        rows["heads"] = torch.randn(n, len(layers), heads, width).to(dtype)
    if "embed" in parts:
        rows["embed"] = torch.randn(n, width).to(dtype)
    save_file(rows, str(folder / "shard_00000.safetensors"))
    manifest = {"layers": list(layers), "shards": [{"file": "shard_00000.safetensors", "count": n}],
                "complete": complete}
    if identity is not None:
        manifest["identity"] = identity
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def refused(dirs, out: Path) -> str:
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        merge_manifests(dirs, out)
    assert "\n" not in str(e.value)
    assert not (out / "manifest.json").exists()
    return str(e.value)


def test_same_kind_merges_in_order(tmp_path):
    a, b = shard_folder(tmp_path / "a", 0), shard_folder(tmp_path / "b", 3)
    merged = merge_manifests([a, b], tmp_path / "all")
    rows = StoredParts(merged).read()
    assert torch.equal(rows["indices"], torch.arange(6)) and rows["heads"].shape == (6, 2, 4, 8)
    assert json.loads((merged / "manifest.json").read_text())["identity"] == IDENTITY


@pytest.mark.parametrize("change, message", [
    ({"identity": {**IDENTITY, "model": "ViT-B-16|laion|fp32"}}, "a different model"),
    ({"identity": {**IDENTITY, "dataset": "shapes:n=10,seed=1"}}, "a different dataset"),
    ({"identity": {**IDENTITY, "parts": ["heads"]}, "parts": ("heads",)}, "a different parts"),
    ({"identity": {**IDENTITY, "normalize": False}}, "a different normalize"),
    ({"layers": (3, 5)}, "layers [3, 5]"),
    ({"identity": None}, "no recorded run identity"),
])
def test_other_run_kinds_are_refused(tmp_path, change, message):
    a, b = shard_folder(tmp_path / "a", 0), shard_folder(tmp_path / "b", 3, **change)
    msg = refused([a, b], tmp_path / "all")
    assert f"cannot merge {b} with {a}" in msg and message in msg, msg


@pytest.mark.parametrize("change, message", [
    ({"parts": ("heads",)}, "other parts"),
    ({"heads": 6}, "another model"),
    ({"width": 16}, "another model"),
    ({"dtype": torch.float16}, "another model or storage"),
])
def test_folders_without_identity_are_checked_by_their_tensors(tmp_path, change, message):
    a = shard_folder(tmp_path / "a", 0, identity=None)
    b = shard_folder(tmp_path / "b", 3, identity=None, **change)
    assert message in refused([a, b], tmp_path / "all")
    merge_manifests([a, shard_folder(tmp_path / "c", 3, identity=None)], tmp_path / "ok")  # same tensors: merged


def test_unfinished_and_broken_folders_are_refused(tmp_path):
    a = shard_folder(tmp_path / "a", 0)
    assert "unfinished" in refused([a, shard_folder(tmp_path / "b", 3, complete=False)], tmp_path / "x")
    c = shard_folder(tmp_path / "c", 3)
    (c / "shard_00000.safetensors").unlink()
    assert "shard_00000.safetensors listed by" in refused([a, c], tmp_path / "x")
    assert "no manifest.json" in refused([a, tmp_path], tmp_path / "x")
