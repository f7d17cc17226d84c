"""``vit-lens-clip explore DIR --out SITE``: a static, offline site to see every head of a collection folder.

From the folder's stored parts (``collect --parts heads,embed,means``) it computes, per kept head:

- its share of the embedding: mean over images of ĉ_{l,h,i} · y_i / ‖y_i‖² (the shares of all parts sum to 1);
- TextSpan (k small) on the stored contributions with a shipped pool of descriptions;
- its top dataset examples along its first principal direction (``methods.examples.TopExamples``), each with
  the head's map of that direction (``joint_map``) recomputed for just those images, re-read from the dataset
  the collection recorded (a ``shapes:`` world is re-rendered from its seed);
- the pool texts nearest to its mean direct effect. The site's search box ranks heads by the cosine of a
  query with their mean direct effects, offline: the query is the mean embedding of the pool texts it matches
  (``viz.explorer.rank_units``); for folders of at most ``max_search_images`` images the site also carries every
  image's head contributions and a thumbnail, and shows the found heads' top images along the query.

Pages are written by ``viz.explorer`` (through the one HTML writer, ``viz.html``).
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from vit_lens_clip.app.collect import textspan_from_collection
from vit_lens_clip.datasets.sources import open_dataset
from vit_lens_clip.decompose.store import StoredParts
from vit_lens_clip.distributed.collection import read_collection_info
from vit_lens_clip.loading import LoadedCLIP, load_clip
from vit_lens_clip.methods.examples import HeadUnit, TopExamples, principal_directions
from vit_lens_clip.methods.spatial.heatmaps import joint_map
from vit_lens_clip.methods.textspan.pools import embed_texts_cached, load_pool
from vit_lens_clip.viz.explorer import HeadView, SiteData, image_png, overlay_png, write_site

__all__ = ["build_site_data", "reopen_dataset", "run_explore_command"]


def reopen_dataset(fingerprint: str, preprocess: Callable) -> Optional[Dataset]:
    """The dataset a collection recorded, when it can be opened again: ``shapes:n=N,seed=S`` is re-rendered,
    ``folder:``/``labelled:`` folders are re-read; anything else gives None (the site then has no images)."""
    found = re.fullmatch(r"shapes:n=(\d+),seed=(-?\d+)", fingerprint)
    if found:
        return open_dataset(f"shapes:{found.group(1)}", preprocess, int(found.group(2)))[0]
    found = re.fullmatch(r"(folder|labelled):(.*):n=\d+:[0-9a-f]+", fingerprint)
    if found and Path(found.group(2)).is_dir():
        return open_dataset(f"{found.group(1)}:{found.group(2)}", preprocess)[0]
    return None


def _display(preprocess: Callable, image: torch.Tensor) -> torch.Tensor:
    """The model input as a displayable [3, H, W] image in [0, 1] (the preprocess's Normalize undone)."""
    for t in getattr(preprocess, "transforms", []):
        if hasattr(t, "mean") and hasattr(t, "std"):
            mean, std = torch.tensor(t.mean).view(-1, 1, 1), torch.tensor(t.std).view(-1, 1, 1)
            return (image * std + mean).clamp(0, 1)
    return (image - image.min()) / (image.max() - image.min()).clamp_min(1e-8)


def _example_images(loaded: LoadedCLIP, dataset: Optional[Dataset], unit: HeadUnit, indices: list[int]
                    ) -> list[Optional[bytes]]:
    """[image | image with the head's map of its direction] PNGs of the dataset images ``indices``."""
    if dataset is None or not indices:
        return [None] * len(indices)
    model = loaded.model
    images = torch.stack([dataset[j]["image"] for j in indices]).to(model.W_proj.device, model.W_proj.dtype)
    maps = joint_map(model, images, unit.layer, unit.head, unit.direction.to(images))
    return [overlay_png(_display(loaded.preprocess, im.float().cpu()), m.float().cpu()) for im, m in zip(images, maps)]


def build_site_data(source: str | Path, loaded: Optional[LoadedCLIP] = None, examples: int = 8,
                    textspan_k: int = 3, pool_name: str = "descriptions", device: str = "cpu",
                    cache_dir: Optional[str] = None, progress: bool = False,
                    max_search_images: int = 1024, queries: Sequence[str] = (), bottom: bool = False) -> SiteData:
    """Everything the site shows, computed from a collection folder (module docstring). ``queries``: texts
    the search knows besides the pool (embedded now, since the page has no text tower)."""
    meta = read_collection_info(source)
    identity = meta["identity"]
    if loaded is None:
        model_name, pretrained, precision = identity["load"]
        loaded = load_clip(model_name, pretrained, device=device, precision=precision)
    stored = StoredParts(source)
    stored.require(("heads", "embed", "means"), "explore")
    contributions = stored.contributions()
    heads = contributions.heads.float()  # [n, L_kept, H, D]
    n, n_kept, n_heads, _ = heads.shape
    layers = contributions.layers
    y = contributions.embedding.float()
    shares = torch.einsum("nlhd,nd->lh", heads, y / y.pow(2).sum(-1, keepdim=True)) / n

    pool = load_pool(pool_name)
    pool_emb = embed_texts_cached(pool, loaded.encode_text, loaded.key, cache_dir=cache_dir, progress=progress).float()
    table = textspan_from_collection(source, pool_emb, pool, k=textspan_k) if textspan_k > 0 else None

    directions = principal_directions(heads)
    units = [HeadUnit(layers[i], h, directions[i, h]) for i in range(n_kept) for h in range(n_heads)]
    reducer = TopExamples(units, k=examples, bottom=bottom)
    for start in range(0, n, 1024):  # streamed over the stored rows, as a collection would feed it
        block = heads[start:start + 1024]
        reducer.add(reducer.head_scores(block, layers), contributions.indices[start:start + 1024])
    kept = reducer.result()

    mean_effect = F.normalize(heads.mean(0), dim=-1)  # [L_kept, H, D]
    extra = [q for q in dict.fromkeys(t.strip() for t in queries) if q and q not in pool]
    if extra:
        pool = pool + extra
        pool_emb = torch.cat([pool_emb, loaded.encode_text(extra).float().cpu()])
    pool_emb = F.normalize(pool_emb, dim=-1)
    search = pool_emb @ mean_effect.reshape(-1, mean_effect.shape[-1]).T  # [n_texts, U]

    dataset = reopen_dataset(str(identity.get("dataset", "")), loaded.preprocess)
    small = n <= max_search_images
    thumbnails = {}
    if small and dataset is not None:
        thumbnails = {j: image_png(_display(loaded.preprocess, dataset[j]["image"].float()))
                      for j in contributions.indices.tolist()}
    views = []
    for u, unit in enumerate(units):
        i, h = layers.index(unit.layer), unit.head
        top = list(zip(kept["top_indices"][u].tolist(), kept["top_scores"][u].tolist()))
        low = list(zip(kept["bottom_indices"][u].tolist(), kept["bottom_scores"][u].tolist())) if bottom else []
        pngs = _example_images(loaded, dataset, unit, [j for j, _ in top])
        low_pngs = _example_images(loaded, dataset, unit, [j for j, _ in low])
        row = table.rows.get((unit.layer, h)) if table is not None else None
        descriptions = []
        if row is not None and row.texts is not None:
            descriptions = [(str(t), float(v)) for t, v in zip(row.texts, row.variance_explained.tolist())]
        nearest = torch.topk(search[:, u], k=min(5, len(pool)))
        views.append(HeadView(
            layer=unit.layer, head=h, share=float(shares[i, h]), descriptions=descriptions,
            nearest=[(pool[t], float(c)) for c, t in zip(nearest.values.tolist(), nearest.indices.tolist())],
            examples=top, images=pngs, bottom=low, bottom_images=low_pngs,
        ))
    return SiteData(
        title=f"{identity.get('model', loaded.key)} on {identity.get('dataset', '?')}",
        n_images=n, layers=layers, n_heads=n_heads, units=views, pool=pool, pool_embeddings=pool_emb,
        mean_effects=mean_effect.reshape(-1, mean_effect.shape[-1]),
        contributions=heads.reshape(n, n_kept * n_heads, -1) if small else None,
        indices=contributions.indices.tolist(), thumbnails=thumbnails,
    )


def _queries(spec: Optional[str]) -> list[str]:
    """``--queries``: a file of texts (one a line), or texts separated by ';'."""
    if not spec:
        return []
    path = Path(spec)
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else spec.split(";")
    return [t.strip() for t in lines if t.strip()]


def run_explore_command(args: argparse.Namespace) -> Path:
    torch.manual_seed(0)
    start = time.perf_counter()
    data = build_site_data(args.source, examples=args.examples, textspan_k=args.textspan_k, pool_name=args.pool,
                           device=args.device, cache_dir=args.cache_dir, progress=not args.quiet,
                           max_search_images=args.search_images, queries=_queries(args.queries),
                           bottom=args.bottom)
    out = write_site(data, args.out)
    if not args.quiet:
        print(f"explorer site of {len(data.units)} heads ({data.n_images} images) in {out}/index.html "
              f"({time.perf_counter() - start:.1f} s)")
    return out
