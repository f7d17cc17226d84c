"""File and weight integrity: sha256 of files, truncated-safetensors detection, non-finite weights.

Used by loading (the shipped model's recorded sha256, any checkpoint file given by path) and by the run
folders (shard and checkpoint checksums). A leaf module: hashlib, json, torch only.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import torch
from torch import nn

from vit_lens_clip.errors import CorruptFileError

WEIGHTS_SHA256_KEY = "weights_sha256"


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_sha256(*tensors) -> str:
    """sha256 over the raw bytes, dtypes and shapes of tensors (None entries included as markers)."""
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 over every parameter and buffer of a module (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        if torch.is_tensor(value):
            h.update(name.encode())
            h.update(tensor_sha256(value).encode())
    return h.hexdigest()


def check_safetensors_file(path: str | Path) -> None:
    """Raise ``CorruptFileError`` naming the file if its header is unreadable or its data is truncated."""
    path = Path(path)
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("shorter than a safetensors header")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8:
                raise ValueError(f"header of {n} bytes does not fit in the file's {size} bytes")
            header = json.loads(f.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, struct.error) as e:
        raise CorruptFileError(f"{path}: not a readable safetensors file ({e})") from None
    if 8 + n + end > size:
        raise CorruptFileError(f"{path}: truncated safetensors file ({size} bytes, its header needs {8 + n + end})")


def check_weights_file(path: str | Path | None) -> None:
    """Pre-flight check of a weights file given by path (safetensors: header and length)."""
    if path is None or not Path(path).is_file():
        return
    if str(path).endswith(".safetensors"):
        check_safetensors_file(path)


def verify_recorded_sha256(config_path: str | Path, weights_path: str | Path) -> None:
    """If ``config_path`` (an open_clip_config.json) records ``weights_sha256``, the weights must match it."""
    config = json.loads(Path(config_path).read_text())
    expected = config.get(WEIGHTS_SHA256_KEY)
    if expected is None:
        return
    actual = sha256_file(weights_path)
    if actual != expected:
        raise CorruptFileError(f"{weights_path}: sha256 {actual[:16]}… differs from the {expected[:16]}… recorded in "
                               f"{Path(config_path).name}; the file is damaged: reinstall vit_lens_clip")


def verify_local_dir(folder: str | Path) -> None:
    """Checks for an open_clip ``local-dir:`` folder: recorded sha256 (if any) and safetensors length."""
    folder = Path(folder)
    weights = sorted(folder.glob("*.safetensors"))
    for w in weights:
        check_safetensors_file(w)
    config = folder / "open_clip_config.json"
    if config.exists() and weights:
        verify_recorded_sha256(config, weights[0])


def check_finite_weights(module: nn.Module, name: str) -> None:
    """Raise ``CorruptFileError`` if any parameter or buffer of ``module`` holds NaN or inf."""
    bad = [k for k, v in module.state_dict().items()
           if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise CorruptFileError(f"{name}: non-finite weights (NaN or inf) in {shown}; the checkpoint is corrupted")
