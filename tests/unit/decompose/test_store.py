"""The store for parts at rest (decompose/store.py, store_writer.py): what ShardWriter writes, StoredParts reads
back bitwise; every damaged folder (a shard's tensors replaced by other finite values, NaN, a truncated or missing
shard, damaged means, an unfinished manifest) is refused with a UserInputError whose message names the file."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from conftest import tiny_clip
from safetensors.torch import load_file, save_file

from vit_lens_clip import HookedViT
from vit_lens_clip.datasets.folder import TensorImages
from vit_lens_clip.decompose.checkpoint import atomic_save_tensors
from vit_lens_clip.decompose.reducers import MeanReducer, StackReducer, run_reducers
from vit_lens_clip.decompose.store import ABLATION_PARTS, TEXTSPAN_PARTS, StoredParts, read_manifest
from vit_lens_clip.decompose.store_writer import ShardWriter
from vit_lens_clip.errors import BadInputError, CorruptFileError, UserInputError
from vit_lens_clip.integrity import sha256_file

N, BATCH, SHARD = 7, 2, 2  # shards of 2, 2, 2 and 1 rows
LAYERS = [1, 2]
FIELDS = ("heads", "embed", "attns", "mlps", "embedding")


@pytest.fixture(scope="module")
def model() -> HookedViT:
    return HookedViT.from_open_clip(tiny_clip(seed=4))


@pytest.fixture(scope="module")
def data() -> TensorImages:
    images = torch.randn(N, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    return TensorImages(images, labels=[i % 3 for i in range(N)])


@pytest.fixture(scope="module")
def reference(model, data) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Every part of every image and the means, kept in memory (what the store must give back)."""
    stack, means = StackReducer(FIELDS), MeanReducer()
    run_reducers(model, data, [stack, means], batch_size=BATCH, layers=LAYERS, normalize=True, progress=False)
    return stack.result(), means.result()


def write_folder(model, data, folder: Path, parts=("heads", "embed", "layers", "mlps"), store_dtype=None,
                 identity=True) -> Path:
    """A store folder as ``collect`` leaves it: shards, means.safetensors and their digests in the manifest."""
    recorded = {"parts": [*parts, "means"], "normalize": True} if identity else None
    writer, means = ShardWriter(folder, parts, SHARD, store_dtype, identity=recorded), MeanReducer()
    run_reducers(model, data, [writer, means], batch_size=BATCH, layers=LAYERS, normalize=True, progress=False)
    writer.result()
    atomic_save_tensors(folder / "means.safetensors", means.result())
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["means_sha256"] = sha256_file(folder / "means.safetensors")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def folder(model, data, tmp_path) -> Path:
    return write_folder(model, data, tmp_path / "store")


def refused(call, name: str, error: type[Exception] = CorruptFileError) -> str:
    """``call()`` raises ``error`` (a UserInputError), in one line that names ``name``."""
    with pytest.raises(error) as caught:
        call()
    message = str(caught.value)
    assert isinstance(caught.value, UserInputError) and "\n" not in message and name in message, message
    return message


# ------------------------------------------------------------------------------------------ round trip


def test_what_the_writer_stores_reads_back_bitwise_in_row_order(folder, reference):
    rows, means = reference
    manifest = read_manifest(folder)
    assert [s["count"] for s in manifest["shards"]] == [2, 2, 2, 1] and manifest["layers"] == LAYERS
    stored = StoredParts(folder)
    got = stored.read()
    assert set(got) == {"heads", "embed", "attns", "mlps", "embedding", "indices", "labels"}
    for key in (*FIELDS, "indices", "labels"):
        assert got[key].dtype == rows[key].dtype and torch.equal(got[key], rows[key]), key
    assert stored.read(["indices", "no-such-tensor"]).keys() == {"indices"}
    assert stored.row_shape("heads") == list(rows["heads"].shape[1:])
    assert all(torch.equal(stored.means()[k], v) for k, v in means.items())


def test_head_columns_are_the_heads_sliced(folder, reference):
    heads = reference[0]["heads"]  # [n, n_kept, H, D]
    picks = [(1, 2), (0, 0), (1, 1)]
    columns = StoredParts(folder).head_columns(picks)
    assert torch.equal(columns, torch.stack([heads[:, i, h] for i, h in picks]))


def test_contributions_and_decomposition_split_the_embedding(folder, reference):
    rows, means = reference
    stored = StoredParts(folder)
    contributions = stored.contributions()
    assert contributions.layers == LAYERS and contributions.normalized and contributions.n_layers == 3
    assert torch.equal(contributions.heads, rows["heads"]) and torch.equal(contributions.indices, torch.arange(N))
    # what the heads of the kept layers leave out of y: every MLP and the attention layer that is not kept
    assert torch.allclose(contributions.rest(), rows["mlps"].sum(1) + rows["attns"][:, 0], rtol=0, atol=1e-5)
    assert torch.allclose(contributions.mean_rest(), means["mlps"].sum(0) + means["attns"][0], rtol=0, atol=1e-6)
    parts, got_means, labels = stored.decomposition()
    assert torch.equal(parts.attns, rows["attns"]) and torch.equal(labels, rows["labels"])
    total = parts.embed + parts.attns.sum(1) + parts.mlps.sum(1)
    assert torch.allclose(total, rows["embedding"], rtol=0, atol=1e-5)
    assert torch.equal(got_means["heads"], means["heads"])


def test_store_dtype_casts_the_parts_and_keeps_the_embedding_float32(model, data, reference, tmp_path):
    rows, _ = reference
    got = StoredParts(write_folder(model, data, tmp_path / "fp16", ("heads",), store_dtype="fp16")).read()
    assert got["heads"].dtype == torch.float16 and torch.equal(got["heads"], rows["heads"].half())
    assert got["embedding"].dtype == torch.float32 and torch.equal(got["embedding"], rows["embedding"])
    assert "embed" not in got and "attns" not in got


def test_missing_parts_come_from_the_identity_or_else_from_the_shards(model, data, tmp_path):
    only_heads = StoredParts(write_folder(model, data, tmp_path / "a", ("heads",)))
    assert only_heads.missing(ABLATION_PARTS) == ["embed", "layers", "mlps"]
    refused(only_heads.contributions, "--parts heads,embed,means", BadInputError)
    anonymous = StoredParts(write_folder(model, data, tmp_path / "b", ("heads", "embed"), identity=False))
    assert anonymous.missing(ABLATION_PARTS) == ["layers", "mlps"] and anonymous.missing(TEXTSPAN_PARTS) == []
    refused(anonymous.contributions, "records no run identity", BadInputError)


def test_the_writer_refuses_unknown_parts_and_dtypes(tmp_path):
    refused(lambda: ShardWriter(tmp_path, ("heads", "neurons")), "unknown parts ['neurons']", BadInputError)
    refused(lambda: ShardWriter(tmp_path, ("heads",), store_dtype="fp8"), "'fp8'", BadInputError)


# ------------------------------------------------------------------------------------------ damaged folders


def _every_read(folder: Path):
    """Each way of reading a folder's shards."""
    return [lambda: StoredParts(folder).read(), lambda: StoredParts(folder).read(["indices"]),
            lambda: StoredParts(folder).head_columns([(0, 0)]), lambda: StoredParts(folder).contributions(),
            lambda: StoredParts(folder).decomposition()]


def test_a_shard_rewritten_with_other_finite_values_is_refused_by_every_read(folder):
    shard = folder / "shard_00001.safetensors"
    tensors = load_file(str(shard))
    edited = {k: (v + 1 if v.is_floating_point() else v) for k, v in tensors.items()}  # finite, same keys and shapes
    save_file(edited, str(shard))
    for read in _every_read(folder):
        assert "does not match the sha256" in refused(read, str(shard))
    save_file(tensors, str(shard))  # the same values again: the folder reads
    assert StoredParts(folder).read()["heads"].shape[0] == N


def test_nan_in_a_shard_is_refused_naming_the_shard_and_the_tensor(folder):
    shard = folder / "shard_00002.safetensors"
    tensors = load_file(str(shard))
    tensors["embed"][0, 3] = float("nan")
    save_file(tensors, str(shard))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["shards"][2]["sha256"] = sha256_file(shard)  # as if written so: the digest matches, the values do not
    (folder / "manifest.json").write_text(json.dumps(manifest))
    message = refused(lambda: StoredParts(folder).read(), str(shard))
    assert "non-finite" in message and "embed" in message
    assert torch.isfinite(StoredParts(folder).read(["heads"])["heads"]).all()  # the other tensors still read


def test_nan_bits_in_the_bytes_are_refused(folder):
    shard = folder / "shard_00000.safetensors"
    raw = bytearray(shard.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    raw[8 + n: 8 + n + 4] = struct.pack("<I", 0x7FC00000)
    shard.write_bytes(bytes(raw))
    refused(lambda: StoredParts(folder).read(), str(shard))


def test_truncated_and_missing_shards_are_refused_naming_them(folder):
    shard = folder / "shard_00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-16])
    for read in _every_read(folder):
        assert "truncated" in refused(read, str(shard))
    shard.unlink()
    for read in _every_read(folder):
        assert "missing" in refused(read, str(shard))


def test_damaged_means_are_refused_naming_the_file(folder):
    means = load_file(str(folder / "means.safetensors"))
    save_file({k: v * 2 for k, v in means.items()}, str(folder / "means.safetensors"))
    refused(lambda: StoredParts(folder).means(), "means.safetensors")
    refused(lambda: StoredParts(folder).contributions(), "means.safetensors")


def test_unfinished_and_foreign_folders_are_refused(folder, tmp_path):
    refused(lambda: StoredParts(tmp_path / "nothing"), "no manifest.json", BadInputError)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    refused(lambda: StoredParts(folder), "unfinished", BadInputError)
    (folder / "manifest.json").write_text("{not json")
    refused(lambda: StoredParts(folder), "manifest.json")


def test_a_resumed_writer_forgets_shards_written_after_its_checkpoint(model, data, tmp_path):
    writer = ShardWriter(tmp_path, ("heads",), shard_size=2)
    run_reducers(model, data, [writer], batch_size=BATCH, layers=LAYERS, progress=False)
    state = {k: v.clone() for k, v in writer.state_dict().items()}
    assert int(state["n_shards"]) == 4
    cut = {**state, "n_shards": torch.tensor(2)}
    resumed = ShardWriter(tmp_path, ("heads",), shard_size=2)
    resumed.load_state_dict(cut)
    assert sorted(p.name for p in tmp_path.glob("shard_*")) == ["shard_00000.safetensors", "shard_00001.safetensors"]
    refused(lambda: StoredParts(tmp_path), "unfinished", BadInputError)  # until the run finishes again
