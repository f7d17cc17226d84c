"""datasets/sources.py: KIND:ARG dataset strings open reproducible datasets with fingerprints; WebDataset shards
are read with their labels; malformed strings are refused with one line."""

import io
import tarfile

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from vit_lens_clip.datasets.sources import ShapesItems, WebDatasetShards, open_dataset

PRE = open_clip.image_transform(32, is_train=False)


def test_shapes_spec():
    data, fingerprint = open_dataset("shapes:3", PRE, seed=2)
    assert isinstance(data, ShapesItems) and len(data) == 3 and fingerprint == "shapes:n=3,seed=2"
    item = data[1]
    assert item["index"] == 1 and item["image"].shape == (3, 32, 32)
    again, _ = open_dataset("shapes:3", PRE, seed=2)
    assert torch.equal(again[1]["image"], item["image"])
    assert open_dataset("shapes:3", PRE, seed=3)[1] != fingerprint


def _shard(path, labels):
    with tarfile.open(path, "w") as tar:
        for i, label in enumerate(labels):
            for ext, data in (("png", _png(i)), ("cls", str(label).encode())):
                info = tarfile.TarInfo(f"sample{i:03d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _png(i):
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_webdataset_shards(tmp_path):
    _shard(tmp_path / "a.tar", [3, 1])
    _shard(tmp_path / "b.tar", [2])
    data, fingerprint = open_dataset(f"wds:{tmp_path}", PRE)
    assert isinstance(data, WebDatasetShards) and len(data) == 3
    assert [data[i]["label"] for i in range(3)] == [3, 1, 2]  # ordered by shard, then position
    assert data[2]["name"] == "b.tar/sample000" and data[1]["image"].shape == (3, 32, 32)
    # pixel values follow the stored image: sample 1 is brighter than sample 0
    assert data[1]["image"].mean() > data[0]["image"].mean()
    same, fingerprint2 = open_dataset(f"wds:{tmp_path / 'a.tar'},{tmp_path / 'b.tar'}", PRE)
    assert fingerprint2 == fingerprint
    with pytest.raises(FileNotFoundError):
        WebDatasetShards([tmp_path / "missing.tar"], PRE)


@pytest.mark.parametrize("spec, words", [("shapes", "must be KIND:ARG"), ("shapes:x", "needs a number"),
                                         ("nope:1", "unknown dataset kind")])
def test_malformed_specs(spec, words):
    with pytest.raises(ValueError, match=words):
        open_dataset(spec, PRE)
