"""Per-rank safetensors shards of the chosen parts, and reading parts back from a merged collection.

A shard holds, for n images: ``embedding`` [n, D], ``indices`` [n] (dataset indices), ``labels`` [n] (if the
dataset has them) and the chosen parts under their ``Decomposition`` names: ``heads`` [n, n_kept, H, D],
``attns`` / ``mlps`` [n, L, D], ``embed`` [n, D], ``source_scores`` [n, n_kept, H, N, K].
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors import safe_open
from torch import Tensor

from vit_lens_clip.datasets.folder import Batch
from vit_lens_clip.decompose.checkpoint import atomic_write_json
from vit_lens_clip.decompose.manifests import read_folder_manifest
from vit_lens_clip.decompose.parts import Decomposition
from vit_lens_clip.decompose.reducers import HeadStackReducer

# CLI part name -> Decomposition field stored in the shards
PART_FIELDS = {"heads": "heads", "layers": "attns", "mlps": "mlps", "embed": "embed", "scores": "source_scores"}
STORE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class PartShardReducer(HeadStackReducer):
    """``HeadStackReducer`` that writes the chosen parts (``PART_FIELDS`` keys) cast to ``store_dtype``.

    Shards, manifest, checkpoint state and resume are the parent's; only the rows kept per batch differ.
    """

    def __init__(self, out_dir: str | Path, parts: Sequence[str], shard_size: int = 4096, store_dtype: str = "fp32",
                 identity: dict[str, Any] | None = None):
        super().__init__(out_dir, shard_size)
        self.identity = identity  # written into the manifest: what a merge checks (decompose.manifests)
        unknown = [p for p in parts if p not in PART_FIELDS]
        if unknown:
            raise ValueError(f"unknown parts {unknown}; choose from {sorted(PART_FIELDS)} (and 'means')")
        if store_dtype not in STORE_DTYPES:
            raise ValueError(f"store dtype must be one of {sorted(STORE_DTYPES)}, got {store_dtype!r}")
        self.fields = [PART_FIELDS[p] for p in parts]
        self.dtype = STORE_DTYPES[store_dtype]
        self.needs_source_scores = "source_scores" in self.fields

    def update(self, parts: Decomposition, batch: Batch) -> None:
        self.layers = parts.layers
        rows = {"embedding": parts.embedding.float(), "indices": batch.indices}
        if batch.labels is not None:
            rows["labels"] = batch.labels
        for name in self.fields:
            value = getattr(parts, name)
            if value is None:
                raise ValueError(f"the decomposition holds no {name}; pass texts for source scores")
            rows[name] = value.to(self.dtype)
        for key, value in rows.items():
            self.buffer.setdefault(key, []).append(value.detach().cpu())
        self.buffered += len(batch)
        if self.buffered >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        with torch.autocast("cpu", enabled=False):  # the buffers are CPU tensors of their final dtype
            super().flush()

    def _write_manifest(self, complete: bool) -> None:
        manifest = {"layers": self.layers, "shards": self.shards, "complete": complete}
        if self.identity is not None:
            manifest["identity"] = self.identity
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out_dir / "manifest.json", manifest)


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"no manifest.json in {folder}: not a finished collection")
    return json.loads(path.read_text())


def read_parts(folder: str | Path, keys: Sequence[str]) -> dict[str, Tensor]:
    """Only the named tensors of every shard listed by ``folder/manifest.json``, concatenated in its order."""
    folder = Path(folder)
    manifest = read_folder_manifest(folder)  # finished, every shard present
    out: dict[str, list[Tensor]] = {k: [] for k in keys}
    for shard in manifest["shards"]:
        with safe_open(str(folder / shard["file"]), framework="pt") as f:
            for k in keys:
                if k in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
                    out[k].append(f.get_tensor(k))
    partial = [k for k, v in out.items() if v and len(v) != len(manifest["shards"])]
    if partial:  # rows of such a key would no longer line up with the other keys' rows
        raise ValueError(f"{partial[0]} is stored in only {len(out[partial[0]])} of the {len(manifest['shards'])} "
                         f"shards of {folder}: the folder mixes runs")
    return {k: torch.cat(v) for k, v in out.items() if v}


def read_head_columns(
    folder: str | Path, heads: Sequence[tuple[int, int]]
) -> Float[Tensor, "n_chosen n d_out"]:
    """The per-image parts of some heads, given as (kept-layer position, head): [len(heads), n, D].

    Each shard is sliced on disk (safetensors ``get_slice``), so a rank reads only the layers it needs.
    """
    folder = Path(folder)
    manifest = read_folder_manifest(folder)  # finished, every shard present
    if not heads:
        raise ValueError("no heads asked for")
    lo, hi = min(i for i, _ in heads), max(i for i, _ in heads) + 1
    columns: list[Tensor] = []
    for shard in manifest["shards"]:
        with safe_open(str(folder / shard["file"]), framework="pt") as f:
            block = f.get_slice("heads")[:, lo:hi]  # [n_shard, hi-lo, H, D]
            columns.append(torch.stack([block[:, i - lo, h] for i, h in heads]))
    return torch.cat(columns, dim=1)


def heads_shape(folder: str | Path) -> list[int]:
    """Shape of ``heads`` in the first shard ([n_shard, n_kept, H, D]), read from its header."""
    folder = Path(folder)
    manifest = read_folder_manifest(folder)  # finished, every shard present
    if not manifest["shards"]:
        raise ValueError(f"{folder} holds no shards")
    with safe_open(str(folder / manifest["shards"][0]["file"]), framework="pt") as f:
        if "heads" not in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
            raise ValueError(f"{folder} holds no per-head parts; collect with --parts heads,...")
        return list(f.get_slice("heads").get_shape())


def shard_files(folder: str | Path, manifest: dict | None = None) -> list[Path]:
    folder = Path(folder)
    manifest = manifest if manifest is not None else read_manifest(folder)
    return [folder / s["file"] for s in manifest["shards"]]
