"""``vit-lens-clip collect`` and ``vit-lens-clip textspan --from DIR``: dataset-scale runs, one process or a
torchrun job (``torchrun --nproc-per-node N -m vit_lens_clip collect ...``); see docs/scaling.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from vit_lens_clip.app.run_folder import replace_files
from vit_lens_clip.datasets.folder import collate_images
from vit_lens_clip.datasets.sources import open_dataset
from vit_lens_clip.decompose.contributions import kept_layers
from vit_lens_clip.decompose.folder_lock import FolderLock, is_lock_file
from vit_lens_clip.decompose.reducers import MeanReducer, run_reducers
from vit_lens_clip.decompose.store import PART_FIELDS, StoredParts
from vit_lens_clip.decompose.store_writer import ShardWriter
from vit_lens_clip.distributed.collection import (
    CollectionPlan,
    collect_on_rank,
    rank_dir,
    read_collection_info,
)
from vit_lens_clip.distributed.ranks import (
    RankInfo,
    barrier,
    finish_distributed,
    gather_to_main,
    start_distributed,
)
from vit_lens_clip.distributed.sampler import rank_range
from vit_lens_clip.errors import BadInputError, OutputFolderError
from vit_lens_clip.loading import LoadedCLIP, load_clip
from vit_lens_clip.methods.examples import HeadUnit, HookFeatures, TopExamples, Unit
from vit_lens_clip.methods.neurons.effects import neuron_activation_hook
from vit_lens_clip.methods.sae.formats import load_sae
from vit_lens_clip.methods.sae.shipped import load_shipped_sae
from vit_lens_clip.methods.sae.splice import check_hook_exists
from vit_lens_clip.methods.textspan.algorithm import TextSpanResult, text_span
from vit_lens_clip.methods.textspan.pools import embed_texts_cached, load_pool
from vit_lens_clip.methods.textspan.runs import TextSpanTable

STORE_DTYPES_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}

__all__ = ["run_collect", "run_textspan_command", "textspan_from_collection"]

# ------------------------------------------------------------------------------------------ collect


def plan_from_args(args: argparse.Namespace, n_layers: int, on_cuda: bool) -> CollectionPlan:
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    unknown = [p for p in parts if p not in PART_FIELDS and p != "means"]
    if unknown or not parts:
        raise ValueError(f"unknown parts {unknown or parts}; choose from {', '.join(PART_FIELDS)}, means")
    if "scores" in parts and not args.texts:
        raise ValueError("the 'scores' part needs --texts POOL")
    if getattr(args, "examples", 0) < 0:
        raise ValueError(f"--examples must be 0 or more, got {args.examples}")
    return CollectionPlan(
        parts=parts, layers=tuple(kept_layers(n_layers, args.last_layers)), batch_size=args.batch_size,
        normalize=not args.no_normalize, store_dtype=args.store, shard_size=args.shard_size,
        checkpoint_every=args.checkpoint_every, num_workers=args.workers, pin_memory=args.pin_memory or on_cuda,
        autocast=args.autocast, examples=getattr(args, "examples", 0),
        example_units=getattr(args, "example_units", "heads"),
    )


def example_units(model: Any, spec: str, layers: Sequence[int]) -> list[Unit]:
    """The units of ``collect --examples``, from ``--example-units``: ``heads`` (every kept head, scored by its
    share of each image's embedding ĉ·y/‖y‖²), ``neurons:L[:L...]`` (every MLP neuron of those layers, scored by
    its largest activation over tokens), ``sae`` / ``sae:PATH`` (every feature of the shipped SAE or of the SAE
    at PATH, by its largest activation over tokens)."""
    units: list[Unit] = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        kind, _, arg = item.partition(":")
        if kind == "heads":
            units += [HeadUnit(layer, h) for layer in layers for h in range(model.cfg.n_heads)]
        elif kind == "neurons":
            try:
                chosen = [int(x) for x in arg.split(":") if x]
            except ValueError:
                raise BadInputError(f"--example-units {item!r}: neurons:L[:L...] with layer numbers") from None
            if not chosen:
                raise BadInputError(f"--example-units {item!r}: name the layers, e.g. neurons:2:3")
            for layer in chosen:
                if not -model.cfg.n_layers <= layer < model.cfg.n_layers:
                    raise BadInputError(f"--example-units: layer {layer} outside the model's {model.cfg.n_layers}")
                layer %= model.cfg.n_layers
                hook, encode = neuron_activation_hook(model, layer)
                names = tuple(f"L{layer}N{n}" for n in range(model.cfg.d_mlp))
                units.append(HookFeatures(hook, names, None if hook.endswith("hook_post") else encode))
        elif kind == "sae":
            sae = load_shipped_sae() if not arg else load_sae(arg)
            sae = sae.to(model.W_proj.device)
            check_hook_exists(model, sae.cfg.hook_name)
            units.append(HookFeatures(sae.cfg.hook_name, tuple(f"F{j}" for j in range(sae.cfg.d_sae)),
                                      lambda t, sae=sae: sae.encode(t.to(sae.W_enc.dtype)), source=sae))
        else:
            raise BadInputError(f"--example-units: unknown unit kind {kind!r}; choose heads, neurons:L, sae, sae:PATH")
    if not units:
        raise BadInputError("--example-units names no units")
    return units


def _texts(loaded: LoadedCLIP, pool: str, cache_dir: str | None = None,
           texts: list[str] | None = None) -> tuple[list[str], torch.Tensor]:
    texts = load_pool(pool) if texts is None else texts
    return texts, embed_texts_cached(texts, loaded.encode_text, loaded.key, cache_dir=cache_dir)


def texts_sha256(texts: list[str]) -> str:
    """The content of a text pool as the collection records it: an edited pool of the same length differs."""
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()


COLLECTION_FILES = ("collection.json",)


def check_collect_folder(out: Path) -> None:
    """``--out`` is a new or empty folder, or one that ``collect`` wrote (it holds ``collection.json``).

    Any other non-empty folder is refused before anything is written in it: its files (a ``manifest.json`` of
    the user's own, for instance) would be mixed with, or replaced by, the collection's.
    """
    if out.is_symlink() and not out.exists():
        raise OutputFolderError(f"--out {out} is a dangling symlink; choose a real folder")
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputFolderError(f"--out {out} is a file, not a folder")
    if (out / "collection.json").is_file():
        linked = _linked_folder(out)
        if linked is not None:
            raise OutputFolderError(f"--out {out}: {linked.relative_to(out)} is a symlink to a folder; collect never "
                                    "writes through symlinks (replace it with a real folder, or choose another --out)")
        return
    foreign = sorted(p.name for p in out.iterdir() if not is_lock_file(p.name))
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise OutputFolderError(f"--out {out} is not empty and holds no collection ({shown}); collect writes into a new "
                                "or empty folder, or resumes its own: choose another folder (your files are kept)")


def _linked_folder(out: Path) -> Path | None:
    """The first symlink to a folder inside ``out`` (writing below it would write outside ``out``), or None.
    Symlinked files are harmless: every file is replaced by a rename, which replaces the link itself."""
    for root, dirs, _ in os.walk(out):  # symlinked folders are listed in dirs, never entered
        for name in sorted(dirs):
            if os.path.islink(os.path.join(root, name)):
                return Path(root) / name
    return None


def available_memory() -> int | None:
    """Bytes of memory available to new allocations: Linux's MemAvailable, or less under an address-space limit
    (``ulimit -v``) set on this process; None where neither is known."""
    found: list[int] = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except OSError:
        pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/statm") as f:
                used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            found.append(max(0, soft - used))
    except (ImportError, OSError, ValueError):
        pass
    return min(found) if found else None


def scores_memory(plan: CollectionPlan, n_rows: int, cfg: Any, n_texts: int) -> int:
    """Bytes a ``scores`` collection holds at its peak: the shard buffer (``min(shard_size, rows)`` images of
    [kept layers, heads, tokens, texts], twice while a shard is concatenated) and one batch's head sources and
    scores in float32 (three times over, for the temporaries of the fold)."""
    per_image = len(plan.layers) * cfg.n_heads * cfg.n_ctx
    stored = STORE_DTYPES_BYTES[plan.store_dtype]
    buffer = 2 * min(plan.shard_size, max(n_rows, 1)) * per_image * n_texts * stored
    batch = 3 * plan.batch_size * per_image * (n_texts + cfg.output_dim) * 4
    return buffer + batch


def check_scores_memory(plan: CollectionPlan, n_rows: int, cfg: Any, n_texts: int, available: int | None) -> None:
    """Refuse (one line) a ``scores`` collection that would not fit in the available memory."""
    if "scores" not in plan.parts or available is None:
        return
    need = scores_memory(plan, n_rows, cfg, n_texts)
    if need > available:
        per_image = len(plan.layers) * cfg.n_heads * cfg.n_ctx * n_texts * STORE_DTYPES_BYTES[plan.store_dtype]
        fit = max(0, int(available // 2 // max(per_image, 1)) - plan.batch_size)
        raise BadInputError(
            f"the 'scores' part of {n_texts} texts needs about {need / 2**30:.1f} GiB ({per_image / 2**20:.1f} MiB per "
            f"image, --shard-size {plan.shard_size}, --batch-size {plan.batch_size}) but {available / 2**30:.1f} GiB "
            f"are available; use fewer texts, fewer --last-layers, --store fp16, or --shard-size "
            f"{fit if fit else 1} or less")


def run_collect(args: argparse.Namespace, dataset: Dataset | None = None, fingerprint: str | None = None) -> Path:
    """The ``collect`` command on this rank. ``dataset`` replaces ``--data`` (tests wrap datasets this way)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    info, device = start_distributed(args.device)
    try:
        loaded = load_clip(args.model, args.pretrained, device=device, precision=args.precision,
                           tokenizer=getattr(args, "tokenizer", None))
        if dataset is None:
            dataset, fingerprint = open_dataset(args.data, loaded.preprocess, args.seed)
        plan = plan_from_args(args, loaded.model.cfg.n_layers, device.type == "cuda")
        identity: dict[str, Any] = {"model": loaded.key, "load": [args.model, args.pretrained, args.precision],
                                    "dataset": fingerprint or args.data}
        texts = None
        if "scores" in plan.parts:
            pool = load_pool(args.texts)
            rows = len(rank_range(len(dataset), info.world_size, info.rank))
            check_scores_memory(plan, rows, loaded.model.cfg, len(pool), available_memory())
            pool, texts = _texts(loaded, args.texts, texts=pool)
            identity["texts"] = [args.texts, len(pool), texts_sha256(pool)]
        examples = (TopExamples(example_units(loaded.model, plan.example_units, plan.layers), plan.examples)
                    if plan.examples else None)
        if args.profile:
            if info.is_main:
                print(profile_collection(loaded, dataset, plan, texts))
                if args.profile_ranks > 1:
                    print(profile_ranks(args, args.profile_ranks))
            return Path(args.out)
        out = Path(args.out)
        check_collect_folder(out)  # before the folder is created or locked, on every rank
        barrier()
        with FolderLock(out, "--out", info.rank):  # one writer per folder, for the whole collection
            out = collect_on_rank(loaded.model, dataset, out, plan, identity, info, device, texts, not args.quiet,
                                  examples=examples)
            if info.is_main and not args.quiet:
                manifest = json.loads((out / "manifest.json").read_text())
                print(f"collected {manifest['n_images']} images on {info.world_size} rank(s) into {out}"
                      + (f"; skipped {len(manifest['skipped'])} unreadable" if manifest["skipped"] else ""))
        return out
    finally:
        finish_distributed()


# ------------------------------------------------------------------------------------------ profile


def _loader(dataset: Dataset, plan: CollectionPlan) -> DataLoader:
    return DataLoader(dataset, batch_size=plan.batch_size, num_workers=plan.num_workers, collate_fn=collate_images,
                      pin_memory=plan.pin_memory)


def profile_collection(loaded: LoadedCLIP, dataset: Dataset, plan: CollectionPlan,
                       texts: torch.Tensor | None = None, repeats: int = 2) -> str:
    """Images/s of the collection (hooks, fold, shards on disk) and of plain ``encode_image``, same DataLoader.

    Each is timed ``repeats`` times after one warm-up pass, interleaved (plain, collection, plain, ...); the best
    time of each is used.
    """
    model, device = loaded.model, loaded.model.W_proj.device
    n = len(dataset)

    def plain() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for batch in _loader(dataset, plan):
                if batch.images is not None:
                    model(batch.images.to(device, non_blocking=True))
        return time.perf_counter() - start

    def collection() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            reducers = [ShardWriter(tmp, [p for p in plan.parts if p != "means"], plan.shard_size, plan.store_dtype)]
            reducers += [MeanReducer()] if "means" in plan.parts else []
            start = time.perf_counter()
            run_reducers(model, dataset, reducers, batch_size=plan.batch_size, layers=list(plan.layers),
                         texts=texts, normalize=plan.normalize, num_workers=plan.num_workers,
                         pin_memory=plan.pin_memory, progress=False, device=device)
            reducers[0].result()
            return time.perf_counter() - start

    plain(), collection()  # warm-up (allocator, worker start, page cache)
    runs = [(plain(), collection()) for _ in range(repeats)]  # interleaved, so drifting load hits both alike
    t_plain, t_coll = min(p for p, _ in runs), min(c for _, c in runs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (f"collect --profile ({model.cfg.model_name}, {n} images, batch {plan.batch_size}, "
            f"{torch.get_num_threads()} threads, parts {','.join(plan.parts)}):\n"
            f"  plain encode_image: {n / t_plain:8.1f} img/s\n"
            f"  collection:         {n / t_coll:8.1f} img/s   ratio {t_plain / t_coll:.2f}x of plain")


def profile_ranks(args: argparse.Namespace, ranks: int) -> str:
    """Time the same collection under torchrun with 1 rank and with ``ranks`` ranks, 1 thread each.

    The time of a run is the slowest rank's collection loop (``run.json``), so model loading and process
    start-up are left out; the wall time of each torchrun is printed too.
    """
    results = {}
    for world in (1, ranks):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
                   "-m", "vit_lens_clip", "collect", "--model", args.model, "--data", args.data, "--seed", str(args.seed),
                   "--out", tmp, "--parts", args.parts, "--last-layers", str(args.last_layers),
                   "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--threads", "1",
                   "--store", args.store, "--quiet"]
            if args.pretrained:
                cmd += ["--pretrained", args.pretrained]
            if args.texts:
                cmd += ["--texts", args.texts]
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            start = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - start
            loop = max(json.loads((rank_dir(Path(tmp), r) / "run.json").read_text())["seconds"] for r in range(world))
            results[world] = (loop, wall)
    (l1, w1), (ln, wn) = results[1], results[ranks]
    return (f"torchrun scaling ({args.data}, 1 thread per rank):\n"
            f"  1 rank:  collection {l1:7.2f} s (wall {w1:6.2f} s)\n"
            f"  {ranks} ranks: collection {ln:7.2f} s (wall {wn:6.2f} s)   speed-up {l1 / ln:.2f}x "
            f"(wall {w1 / wn:.2f}x)")


# ------------------------------------------------------------------------------------------ downstream


def _light(row: TextSpanResult) -> TextSpanResult:
    """A row without its [n, D] reconstruction (not needed by the table; keeps the gather small)."""
    return dataclasses.replace(row, reconstruction=row.reconstruction[:0], prefix_reconstructions={})


def textspan_from_collection(folder: str | Path, text_embeddings: torch.Tensor, pool: list[str] | None,
                             k: int = 10, rank: int = 80, info: RankInfo | None = None,
                             device: torch.device | None = None) -> TextSpanTable | None:
    """TextSpan of every kept head of a collection; heads are split over the ranks and gathered on rank 0.

    Rank r reads only its heads' columns (``rank_range`` over the layer-major head list) from the shards.
    Returns the table on rank 0, None elsewhere.
    """
    info, device = info or RankInfo(), device or torch.device("cpu")
    read_collection_info(folder)  # a finished collection (one-line error otherwise)
    stored = StoredParts(folder)
    stored.require(("heads",), "TextSpan")
    layers = stored.layers
    n_heads = stored.row_shape("heads")[1]
    keys = [(i, h) for i in range(len(layers)) for h in range(n_heads)]
    mine = [keys[j] for j in rank_range(len(keys), info.world_size, info.rank)]
    rows: dict[tuple[int, int], TextSpanResult] = {}
    if mine:
        columns = stored.head_columns(mine).float().to(device)
        result = text_span(columns, text_embeddings.to(device), k=k, rank=rank, texts=pool)
        rows = {(layers[i], h): _light(result[j]) for j, (i, h) in enumerate(mine)}
    gathered = gather_to_main(rows, info)
    if not info.is_main:
        return None
    table: dict[tuple[int, int], TextSpanResult] = {}
    for part in gathered:
        table.update(part)
    return TextSpanTable(dict(sorted(table.items())), pool)


def run_textspan_command(args: argparse.Namespace) -> Path | None:
    info, device = start_distributed(args.device)
    try:
        meta = read_collection_info(args.source)
        out = Path(args.out or Path(args.source) / "textspan")
        # rank 0 writes: it holds --out's lock for the whole run, and puts the files in place by renames
        with FolderLock(out, "--out") if info.is_main else contextlib.nullcontext():
            model, pretrained, precision = meta["identity"]["load"]
            loaded = load_clip(model, pretrained, device=device, precision=precision, tokenizer=args.tokenizer)
            if info.is_main:  # one rank fills the text-embedding cache, the others then read it
                pool, emb = _texts(loaded, args.pool, args.cache_dir)
            barrier()
            if not info.is_main:
                pool, emb = _texts(loaded, args.pool, args.cache_dir)
            table = textspan_from_collection(args.source, emb, pool, args.k, args.rank, info, device)
            if table is None:
                return None
            paths = replace_files(out, table.write)
        print(f"TextSpan of {len(table.rows)} heads on {info.world_size} rank(s): {', '.join(map(str, paths))}")
        return out
    finally:
        finish_distributed()
