"""distributed/collection.py in one process: collect_on_rank writes a store folder whose rows are the
decomposition of each image in dataset order, merges it, refuses another dataset's folder, and resumes as done."""

import json

import pytest
import torch
from conftest import tiny_clip

from vit_lens_clip.decompose.parts import decompose
from vit_lens_clip.decompose.store import StoredParts
from vit_lens_clip.distributed.collection import (
    CollectionPlan,
    collect_on_rank,
    merge_collection,
    rank_dir,
    read_collection_info,
)
from vit_lens_clip.model.hooked_vit import HookedViT

N = 5


class TinyImages(torch.utils.data.Dataset):
    def __init__(self, n):
        self.images = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"index": i, "name": f"img{i}", "image": self.images[i]}


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    model = HookedViT.from_open_clip(tiny_clip(seed=11))
    data = TinyImages(N)
    out = tmp_path_factory.mktemp("collection")
    plan = CollectionPlan(parts=("heads", "embed", "means"), layers=(1, 2), batch_size=2, normalize=False)
    identity = {"model": "tiny", "dataset": "tiny:n=5"}
    collect_on_rank(model, data, out, plan, identity, progress=False)
    return model, data, out, plan, identity


def test_rows_are_each_images_decomposition_in_order(collected):
    model, data, out, _, _ = collected
    info = read_collection_info(out)
    assert info["complete"] and info["world_size"] == 1 and info["identity"]["n"] == N
    stored = StoredParts(out)
    assert stored.layers == [1, 2]
    rows = stored.read()
    parts = decompose(model, data.images, layers=[1, 2])
    assert rows["heads"].shape == (N, 2, 4, 48)
    assert torch.allclose(rows["heads"].float(), parts.heads, atol=1e-5)
    assert torch.allclose(rows["embed"].float(), parts.embed, atol=1e-5)
    assert (out / "means.safetensors").is_file() and (rank_dir(out, 0) / "parts").is_dir()


def test_finished_folder_is_kept_and_another_dataset_refused(collected):
    model, data, out, plan, identity = collected
    manifest = (out / "manifest.json").read_text()
    assert collect_on_rank(model, data, out, plan, identity, progress=False) == out  # done: nothing rewritten
    assert (out / "manifest.json").read_text() == manifest
    with pytest.raises(ValueError, match="different dataset") as caught:
        collect_on_rank(model, data, out, plan, {**identity, "dataset": "other"}, progress=False)
    assert "\n" not in str(caught.value)
    # merging again rebuilds the same manifest from the rank's shards
    assert merge_collection(out) == out
    assert json.loads((out / "manifest.json").read_text())["shards"] == json.loads(manifest)["shards"]


def test_unfinished_and_missing_folders_say_so(tmp_path, collected):
    with pytest.raises(FileNotFoundError, match="not a collection folder"):
        read_collection_info(tmp_path)
    (tmp_path / "collection.json").write_text(json.dumps({"identity": {}, "world_size": 1, "complete": False}))
    with pytest.raises(ValueError, match="unfinished"):
        read_collection_info(tmp_path)
    model, data, _, plan, identity = collected
    with pytest.raises(ValueError, match="empty"):
        collect_on_rank(model, TinyImages(0), tmp_path / "e", plan, identity, progress=False)
