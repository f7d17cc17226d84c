"""The one writer of store folders (docs/store.md): a reducer that streams the chosen parts of every image to
safetensors shards listed by a ``manifest.json``; ``decompose.store.StoredParts`` reads them back.

Memory holds at most one shard. Rows are copied to the host without waiting for the device (``to_host``); the
writer waits once per shard, when it writes one. The shard list (file, row count, sha256) is the reducer's checkpoint state, so a
resumed ``run_reducers`` rewrites the manifest from it and removes shards written after the checkpoint: a
killed run resumes to the same files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_tensor_bytes
from torch import Tensor

from vit_lens_clip.datasets.folder import Batch
from vit_lens_clip.decompose import checkpoint as ckpt_io
from vit_lens_clip.decompose.parts import Decomposition
from vit_lens_clip.decompose.reducers import Reducer, host_ready, to_host
from vit_lens_clip.decompose.store import MANIFEST, PART_FIELDS, STORE_DTYPES
from vit_lens_clip.errors import BadInputError


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.safetensors"


class ShardWriter(Reducer):
    """Writes ``embedding``, ``indices`` (and ``labels``) and the chosen ``parts`` of every image to ``out_dir``.

    ``parts`` are ``collect --parts`` names (keys of ``store.PART_FIELDS``). With ``store_dtype`` ("fp32", "fp16",
    "bf16") the parts are cast to it and the embedding to float32; without, every tensor keeps the dtype it was
    computed in. ``identity`` (a JSON-able record of the run) is written into the manifest, where a merge checks it.
    """

    def __init__(self, out_dir: str | Path, parts: Sequence[str] = ("heads",), shard_size: int = 4096,
                 store_dtype: str | None = None, identity: dict[str, Any] | None = None):
        unknown = [p for p in parts if p not in PART_FIELDS]
        if unknown:
            raise BadInputError(f"unknown parts {unknown}; choose from {sorted(PART_FIELDS)} (and 'means')")
        if store_dtype is not None and store_dtype not in STORE_DTYPES:
            raise BadInputError(f"store dtype must be one of {sorted(STORE_DTYPES)}, got {store_dtype!r}")
        self.out_dir = Path(out_dir)
        self.shard_size = shard_size
        self.fields = [PART_FIELDS[p] for p in parts]
        self.dtype = None if store_dtype is None else STORE_DTYPES[store_dtype]
        self.identity = identity
        self.needs_source_scores = "source_scores" in self.fields
        self.buffer: dict[str, list[Tensor]] = {}
        self.buffered = 0
        self.shards: list[dict[str, Any]] = []
        self.layers: list[int] = []

    def update(self, parts: Decomposition, batch: Batch) -> None:
        self.layers = parts.layers
        rows = {"embedding": parts.embedding if self.dtype is None else parts.embedding.float(), "indices": batch.indices}
        if batch.labels is not None:
            rows["labels"] = batch.labels
        for name in self.fields:
            value = getattr(parts, name)
            if value is None:
                raise BadInputError(f"the decomposition holds no {name}; pass texts for source scores")
            rows[name] = value if self.dtype is None else value.to(self.dtype)
        for key, value in rows.items():
            self.buffer.setdefault(key, []).append(to_host(value))  # no wait for the device: see flush
        self.buffered += len(batch)
        if self.buffered >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as the next shard and list it in an unfinished manifest."""
        if not self.buffered:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        name = shard_name(len(self.shards))
        host_ready()  # the rows' copies to the host, started batch by batch, are done (once per shard)
        with torch.autocast("cpu", enabled=False):  # the buffers are CPU tensors of their final dtype
            tensors = {k: torch.cat(v).contiguous() for k, v in self.buffer.items()}
        sha = ckpt_io.atomic_save_tensors(self.out_dir / name, tensors)
        self.shards.append({"file": name, "count": self.buffered, "sha256": sha})
        self.buffer, self.buffered = {}, 0
        self._write_manifest(complete=False)

    def _write_manifest(self, complete: bool) -> None:
        manifest: dict[str, Any] = {"layers": self.layers, "shards": self.shards, "complete": complete}
        if self.identity is not None:
            manifest["identity"] = self.identity
        self.out_dir.mkdir(parents=True, exist_ok=True)
        ckpt_io.atomic_write_json(self.out_dir / MANIFEST, manifest)

    def result(self) -> Path:
        """Write the last shard and mark the manifest complete (when the folder exists); the folder."""
        self.flush()
        if self.out_dir.exists():
            self._write_manifest(complete=True)
        return self.out_dir

    def state_dict(self) -> dict[str, Tensor]:
        """The shard list itself (counts and sha256 digests), so a resume never trusts a newer manifest."""
        self.flush()
        sha = [bytes.fromhex(s["sha256"]) for s in self.shards]
        return {"n_shards": torch.tensor(len(self.shards)),
                "counts": torch.tensor([s["count"] for s in self.shards], dtype=torch.long),
                "sha256": torch.tensor([list(b) for b in sha], dtype=torch.uint8).reshape(-1, 32),
                "layers": torch.tensor(self.layers, dtype=torch.long)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        n = int(state["n_shards"])
        self.layers = state["layers"].tolist()
        self.shards = [{"file": shard_name(i), "count": int(state["counts"][i]),
                        "sha256": bytes(state["sha256"][i].tolist()).hex()} for i in range(n)]
        for path in sorted(self.out_dir.glob("shard_*.safetensors")):  # written after the checkpoint: redo them
            if int(path.stem.split("_")[1]) >= n:
                ckpt_io.remove_file(path)
        self._write_manifest(complete=False)


def examples_bytes(result: dict[str, Any]) -> bytes:
    """A ``TopExamples.result()`` as the bytes of ``examples.safetensors``: its tensors, and the unit names (JSON)
    in the file's metadata. ``collect`` writes them beside the manifest, which records their sha256."""
    tensors = {k: v.contiguous() for k, v in result.items() if isinstance(v, Tensor)}
    return save_tensor_bytes(tensors, metadata={"names": json.dumps(list(result["names"]))})
