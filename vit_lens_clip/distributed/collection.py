"""One collection over a dataset, run by every rank of a torchrun job (or by one process).

Folder layout (``out``):

    collection.json                 identity (model, dataset, parts, layers, ...), world size, complete flag
    ranks/rank_RRRRR/parts/         that rank's store folder: shards + manifest (ShardWriter)
    ranks/rank_RRRRR/checkpoint/    run_reducers' checkpoint of that rank (resume after a kill)
    ranks/rank_RRRRR/means_state.safetensors, run.json
    manifest.json                   merged by rank 0: every rank's shards in rank order = dataset order
    means.safetensors               merged MeanReducer result (if "means" was collected; its sha256 in the manifest)
    ranks/rank_RRRRR/examples_state.safetensors, examples.safetensors
                                    with ``plan.examples`` K > 0: each rank's TopExamples state, and rank 0's merge
                                    of them in rank order (top-K images per unit; its sha256 in the manifest)

The folder is a store folder (docs/store.md): ``decompose.store.StoredParts`` reads it back.

Rank r reads the contiguous block ``rank_range(n, W, r)``; sums of the ``MeanReducer`` are gathered to
rank 0 and added in rank order (float64), so means match a one-process run to float64 rounding.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors.torch import save as save_tensor_bytes
from torch import Tensor
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from vit_lens_clip.datasets.folder import Batch
from vit_lens_clip.decompose.checkpoint import open_new_file
from vit_lens_clip.decompose.folder_lock import folder_locked
from vit_lens_clip.decompose.manifests import merge_manifests
from vit_lens_clip.decompose.parts import Decomposition
from vit_lens_clip.decompose.reducers import MeanReducer, Reducer, run_reducers
from vit_lens_clip.decompose.store import EXAMPLES, MEANS, read_manifest
from vit_lens_clip.decompose.store_writer import ShardWriter, examples_bytes
from vit_lens_clip.distributed.ranks import (
    RankInfo,
    barrier,
    broadcast_from_main,
    gather_to_main,
)
from vit_lens_clip.distributed.sampler import rank_range
from vit_lens_clip.integrity import sha256_file
from vit_lens_clip.model.hooked_vit import HookedViT

AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class CollectionPlan:
    """What to collect and how. ``parts``: keys of ``decompose.store.PART_FIELDS`` and/or "means"."""

    parts: tuple[str, ...] = ("heads", "embed", "means")
    layers: tuple[int, ...] = ()
    batch_size: int = 32
    normalize: bool = True
    store_dtype: str = "fp32"
    shard_size: int = 4096
    checkpoint_every: int = 50
    num_workers: int = 0
    pin_memory: bool = False
    autocast: str | None = None
    examples: int = 0
    example_units: str = "heads"

    def identity(self) -> dict[str, Any]:
        """The settings that change the collected numbers (a resume must use the same)."""
        keep = ("parts", "layers", "batch_size", "normalize", "store_dtype", "autocast")
        keep += ("examples", "example_units") if self.examples else ()
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if k in keep}


def rank_dir(out: Path, rank: int) -> Path:
    return out / "ranks" / f"rank_{rank:05d}"


def _write_bytes(path: Path, data: bytes) -> None:
    """Write through a temporary name in the same folder, then rename: never follows a symlink, never writes
    outside the folder, and the previous file stays whole until the rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open_new_file(tmp) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_json(path: Path, value: Any) -> None:
    _write_bytes(path, json.dumps(value, indent=1).encode())


def _save_tensors(path: Path, tensors: dict[str, Tensor]) -> None:
    _write_bytes(path, save_tensor_bytes({k: v.contiguous() for k, v in tensors.items()}))


def check_folder(out: Path, identity: dict[str, Any], world_size: int) -> bool:
    """Refuse a folder written by another model/dataset/settings or an unfinished one of another world size.

    Returns True when the folder already holds this collection, finished.
    """
    path = out / "collection.json"
    if not path.is_file():
        return False
    stored = json.loads(path.read_text())
    old = stored.get("identity", {})
    first = ["model", "dataset", "n"]  # report the most telling difference first
    order = first + sorted((set(old) | set(identity)) - set(first))
    changed = [k for k in order if old.get(k) != identity.get(k)]
    if changed:
        k = changed[0]
        raise ValueError(f"{out} was written by a different {k} ({old.get(k)!r}, now {identity.get(k)!r}); "
                         f"use another output folder")
    if stored.get("complete"):
        return True
    if stored["world_size"] != world_size:
        raise ValueError(f"{out} holds an unfinished collection by {stored['world_size']} ranks, relaunched with "
                         f"{world_size}; resume with --nproc-per-node {stored['world_size']} or use another output folder")
    return False


class _Progress(Reducer):
    """Advances a tqdm bar by the images of each batch (the bar shows images/s)."""

    def __init__(self, bar: tqdm):
        self.bar = bar

    def update(self, parts: Decomposition, batch: Batch) -> None:
        self.bar.update(len(batch))

    def result(self) -> None:
        self.bar.close()


def collect_on_rank(
    model: HookedViT,
    dataset: Dataset,
    out: str | Path,
    plan: CollectionPlan,
    identity: dict[str, Any],
    info: RankInfo | None = None,
    device: torch.device | None = None,
    texts: Float[Tensor, "n_texts d_out"] | None = None,
    progress: bool = True,
    examples: Reducer | None = None,
) -> Path:
    """Collect this rank's block of ``dataset`` into ``out`` and, on rank 0, merge all ranks.

    ``identity`` names the model and dataset (e.g. ``{"model": loaded.key, "dataset": "shapes:n=41,seed=0"}``);
    the plan's settings and the dataset size are added. Every rank must call this (it synchronises). Each rank
    holds its lock file in ``out`` for the whole call (``decompose.folder_lock``): a second collection on the same
    folder is refused with ``FolderBusyError``; a killed one leaves no lock behind.
    ``examples``: a mergeable top-K reducer (``methods.examples.TopExamples`` of ``plan.examples`` images, the same
    units on every rank; its ``hooks()`` join the pass); rank 0 merges the ranks' states (``merge_state``) into
    ``examples.safetensors``.
    """
    info, out = info or RankInfo(), Path(out)
    with folder_locked(out, "out", info.rank):  # as it is for `vit-lens-clip collect` (which took it already)
        return _collect_locked(model, dataset, out, plan, identity, info, device, texts, progress, examples)


def _collect_locked(model: HookedViT, dataset: Dataset, out: Path, plan: CollectionPlan, identity: dict[str, Any],
                    info: RankInfo, device: torch.device | None, texts: Tensor | None, progress: bool,
                    examples: Reducer | None = None) -> Path:
    """``collect_on_rank`` under the folder's lock."""
    n = len(dataset)
    if n == 0:
        raise ValueError("the dataset is empty")
    identity = {**identity, "n": n, **plan.identity()}
    done = check_folder(out, identity, info.world_size)  # every rank checks before rank 0 writes
    barrier()
    if done:
        return out
    if info.is_main:
        _write_json(out / "collection.json", {"identity": identity, "world_size": info.world_size, "complete": False})
    barrier()

    mine = rank_range(n, info.world_size, info.rank)
    here = rank_dir(out, info.rank)
    shard_parts = [p for p in plan.parts if p != "means"]
    stack = ShardWriter(here / "parts", shard_parts, plan.shard_size, plan.store_dtype, identity=identity)
    means = MeanReducer() if "means" in plan.parts else None
    bar = tqdm(total=len(mine), desc=f"collecting (rank 0 of {info.world_size})", unit="img",
               disable=not (progress and info.is_main))
    if (examples is None) != (plan.examples == 0):
        raise ValueError("plan.examples > 0 needs an examples reducer, and an examples reducer needs plan.examples")
    reducers: list[Reducer] = [stack] + ([means] if means else []) + ([examples] if examples else []) + [_Progress(bar)]
    started = time.perf_counter()
    summary = None
    if len(mine):
        dev = device or model.W_proj.device
        autocast = (torch.autocast(dev.type, dtype=AUTOCAST_DTYPES[plan.autocast]) if plan.autocast
                    else contextlib.nullcontext())
        with autocast:
            summary = run_reducers(
                model, Subset(dataset, mine), reducers, batch_size=plan.batch_size, layers=list(plan.layers) or None,
                texts=texts, normalize=plan.normalize, checkpoint_dir=here / "checkpoint",
                extra_hooks=examples.hooks() if examples else (),
                checkpoint_every=plan.checkpoint_every, num_workers=plan.num_workers, pin_memory=plan.pin_memory,
                progress=False, device=dev,
            )
    stack.layers = stack.layers or [l % model.cfg.n_layers for l in plan.layers]
    here.joinpath("parts").mkdir(parents=True, exist_ok=True)
    stack.result()
    bar.close()
    if means is not None:
        _save_tensors(here / "means_state.safetensors", means.state_dict())
    if examples is not None:
        _save_tensors(here / "examples_state.safetensors", examples.state_dict())
    _write_json(here / "run.json", {
        "rank": info.rank, "range": [mine.start, mine.stop], "seconds": time.perf_counter() - started,
        "images": summary.images if summary else 0, "resumed_from": summary.resumed_from if summary else 0,
        "skipped": summary.skipped if summary else [],
    })

    states = gather_to_main(means.state_dict() if means is not None else None, info)
    kept = gather_to_main(examples.state_dict() if examples is not None else None, info)
    error = None
    if info.is_main:
        try:
            if means is not None:
                total = MeanReducer()
                total.merge_from(states)
                _save_tensors(out / MEANS, total.result())
            if examples is not None:
                for state in kept[1:]:  # rank 0's own state is in it; any order gives the same top-K
                    examples.merge_state(state)
                _write_bytes(out / EXAMPLES, examples_bytes(examples.result()))
            merge_collection(out)
        except (ValueError, FileNotFoundError) as e:
            error = str(e)
    error = broadcast_from_main(error, info)
    if error:
        raise ValueError(error)
    return out


def merge_collection(out: str | Path) -> Path:
    """Rank 0's last step: check every rank finished, then write ``out/manifest.json`` in dataset order.

    The merged manifest references the ranks' shard files (no copy) and records the sha256 of the means;
    ``decompose.store.StoredParts(out)`` reads it.
    """
    out = Path(out)
    info_path = out / "collection.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{out} holds no collection.json: not a collection folder")
    meta = json.loads(info_path.read_text())
    world = meta["world_size"]
    images, skipped, folders = 0, [], []
    for r in range(world):
        here = rank_dir(out, r)
        try:
            manifest = read_manifest(here / "parts")  # finished, every shard present
            run = json.loads((here / "run.json").read_text())
        except (ValueError, FileNotFoundError) as e:
            raise ValueError(f"rank {r}'s shards are missing from {here} ({e}); relaunch the collection to redo them") from None
        if manifest.get("identity") != meta["identity"]:
            raise ValueError(f"rank {r}'s shards in {here} were written by another collection (their manifest's "
                             f"identity differs from {info_path}); relaunch the collection in an empty folder")
        folders.append(here / "parts")
        images += sum(s["count"] for s in manifest["shards"])
        skipped += run["skipped"]
    expected = meta["identity"]["n"] - len(skipped)
    if images != expected:
        raise ValueError(f"the ranks' shards hold {images} images, expected {expected}; relaunch the collection")
    extra: dict[str, Any] = {"n_images": images, "skipped": skipped}
    if (out / MEANS).is_file():
        extra["means_sha256"] = sha256_file(out / MEANS)
    if (out / EXAMPLES).is_file():
        extra["examples_sha256"] = sha256_file(out / EXAMPLES)
    merge_manifests(folders, out, extra)  # same parts, dtypes and shapes on every rank, or refused
    meta["complete"] = True
    _write_json(info_path, meta)
    return out


def read_collection_info(out: str | Path) -> dict[str, Any]:
    """collection.json of a finished collection (one-line error otherwise)."""
    path = Path(out) / "collection.json"
    if not path.is_file():
        raise FileNotFoundError(f"{out} is not a collection folder (no collection.json); run `vit-lens-clip collect` first")
    meta = json.loads(path.read_text())
    if not meta.get("complete"):
        raise ValueError(f"the collection in {out} is unfinished; relaunch `vit-lens-clip collect` to finish it")
    return meta
