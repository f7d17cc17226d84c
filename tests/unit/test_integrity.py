"""integrity.py: sha256 of files, bytes, tensors and state dicts; truncated or unreadable safetensors files; recorded
checksums of a local model folder; non-finite weights."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from vit_lens_clip.errors import CorruptFileError
from vit_lens_clip.integrity import (
    WEIGHTS_SHA256_KEY,
    check_finite_weights,
    check_safetensors_file,
    check_weights_file,
    sha256_bytes,
    sha256_file,
    state_dict_sha256,
    tensor_sha256,
    verify_local_dir,
    verify_recorded_sha256,
)


def test_file_and_bytes_hashes_are_sha256(tmp_path):
    data = bytes(range(256)) * 1000
    path = tmp_path / "blob"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_bytes(data) == expected
    assert sha256_file(path) == expected
    assert sha256_file(path, chunk=1000) == expected  # chunked reading covers every byte
    assert sha256_file(str(path), chunk=7) == expected


def test_tensor_hash_depends_on_bytes_dtype_and_shape_only():
    x = torch.arange(12, dtype=torch.float32)
    assert tensor_sha256(x) == tensor_sha256(x.clone())
    assert tensor_sha256(x.reshape(3, 4).t()) == tensor_sha256(x.reshape(3, 4).t().contiguous())  # layout free
    variants = [x.reshape(3, 4), x.double(), x + 1e-6, x.to(torch.int32)]
    hashes = {tensor_sha256(x)} | {tensor_sha256(v) for v in variants}
    assert len(hashes) == 1 + len(variants)
    assert tensor_sha256(x, None) != tensor_sha256(x) != tensor_sha256(None, x)  # None is a marker, in order
    assert tensor_sha256(torch.zeros(0)) != tensor_sha256(torch.zeros(0, 2))  # empty tensors still differ by shape


def test_state_dict_hash_sees_names_values_and_buffers():
    torch.manual_seed(0)
    a = nn.BatchNorm1d(3)
    b = nn.BatchNorm1d(3)
    assert state_dict_sha256(a) == state_dict_sha256(b)
    b.running_mean += 1  # a buffer
    assert state_dict_sha256(a) != state_dict_sha256(b)
    lin1, lin2 = nn.Linear(2, 2), nn.Linear(2, 2)
    lin2.load_state_dict(lin1.state_dict())
    assert state_dict_sha256(lin1) == state_dict_sha256(lin2)
    with torch.no_grad():
        lin2.bias[0] += 1e-7
    assert state_dict_sha256(lin1) != state_dict_sha256(lin2)


def write_safetensors(path):
    save_file({"a": torch.randn(10, 10), "b": torch.arange(7)}, str(path))
    return path.read_bytes()


def test_an_intact_safetensors_file_passes(tmp_path):
    path = tmp_path / "w.safetensors"
    write_safetensors(path)
    check_safetensors_file(path)
    check_weights_file(path)


@pytest.mark.parametrize("cut, message", [(5, "not a readable safetensors file"),
                                          (40, "not a readable safetensors file"),
                                          (-1, "truncated safetensors file")])
def test_truncated_safetensors_files_are_named(tmp_path, cut, message):
    path = tmp_path / "w.safetensors"
    data = write_safetensors(path)
    path.write_bytes(data[:cut])
    with pytest.raises(CorruptFileError, match=message) as caught:
        check_safetensors_file(path)
    assert str(path) in str(caught.value)
    with pytest.raises(CorruptFileError):
        check_weights_file(path)


def test_a_garbled_header_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    data = bytearray(write_safetensors(path))
    data[8] = ord("#")  # the JSON header no longer parses
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="not a readable safetensors file"):
        check_safetensors_file(path)


def test_check_weights_file_ignores_what_it_cannot_check(tmp_path):
    check_weights_file(None)
    check_weights_file(tmp_path / "missing.safetensors")
    other = tmp_path / "w.bin"
    other.write_bytes(b"12")  # not a safetensors file by name: not checked here
    check_weights_file(other)


def test_recorded_sha256_must_match(tmp_path):
    weights = tmp_path / "open_clip_model.safetensors"
    data = write_safetensors(weights)
    config = tmp_path / "open_clip_config.json"
    config.write_text(json.dumps({"model_cfg": {}}))
    verify_recorded_sha256(config, weights)  # nothing recorded: nothing to check
    config.write_text(json.dumps({WEIGHTS_SHA256_KEY: hashlib.sha256(data).hexdigest()}))
    verify_recorded_sha256(config, weights)
    verify_local_dir(tmp_path)
    config.write_text(json.dumps({WEIGHTS_SHA256_KEY: hashlib.sha256(data + b"x").hexdigest()}))
    with pytest.raises(CorruptFileError, match="differs from the .* recorded in open_clip_config.json"):
        verify_recorded_sha256(config, weights)
    with pytest.raises(CorruptFileError, match="recorded"):
        verify_local_dir(tmp_path)


def test_local_dir_checks_the_length_before_the_checksum(tmp_path):
    weights = tmp_path / "open_clip_model.safetensors"
    data = write_safetensors(weights)
    weights.write_bytes(data[:-10])
    with pytest.raises(CorruptFileError, match="truncated"):
        verify_local_dir(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    verify_local_dir(empty)  # no weights there: nothing to check


def test_non_finite_weights_are_named():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    check_finite_weights(model, "model")
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    model[1].running_var[1] = float("inf")
    with pytest.raises(CorruptFileError, match=r"^m: non-finite weights \(NaN or inf\) in 0.weight, 1.running_var;"):
        check_finite_weights(model, "m")


def test_many_non_finite_weights_are_summarised():
    model = nn.ModuleList([nn.Linear(1, 1) for _ in range(4)])
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("inf"))
    with pytest.raises(CorruptFileError, match=r"0.weight, 0.bias, 1.weight, 1.bias, 2.weight and 3 more;"):
        check_finite_weights(model, "m")
    check_finite_weights(nn.Embedding(3, 2).requires_grad_(False).to(torch.float16), "half")  # finite: passes
