"""Reading a finished collection folder (``vit-lens-clip collect``) back as method inputs.

Whatever number of ranks wrote the folder, its merged ``manifest.json`` lists the shards in dataset order, so
the rows read here are those of one process over the same dataset. A folder holds only the parts it was
collected with (``collection.json``'s ``identity["parts"]``); asking for another part raises one line that
names the ``collect --parts`` that would provide it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vit_lens_clip.decompose.parts import Decomposition
from vit_lens_clip.distributed.collection import read_collection_info, read_means
from vit_lens_clip.distributed.shards import read_parts

# what each use of a folder needs (collect --parts names)
TEXTSPAN_PARTS: tuple[str, ...] = ("heads", "embed", "means")
ABLATION_PARTS: tuple[str, ...] = ("heads", "embed", "layers", "mlps", "means")


def missing_parts(meta: dict[str, Any], needed: tuple[str, ...]) -> list[str]:
    """The ``collect --parts`` names in ``needed`` that the collection ``meta`` (collection.json) lacks."""
    have = set(meta["identity"]["parts"])
    return [p for p in needed if p not in have]


def parts_hint(needed: tuple[str, ...]) -> str:
    return f"collect with --parts {','.join(needed)}"


def require_parts(folder: str | Path, needed: tuple[str, ...], purpose: str) -> dict[str, Any]:
    """collection.json of ``folder``; raises one line when it lacks one of the ``needed`` parts."""
    meta = read_collection_info(folder)
    missing = missing_parts(meta, needed)
    if missing:
        raise ValueError(f"{folder} lacks parts {missing} for {purpose}: {parts_hint(needed)}")
    return meta


@dataclass
class HeadRows:
    """The per-image rows TextSpan reads from a folder: heads [n, n_kept, H, D], embed and embedding [n, D],
    dataset indices [n], labels [n] (if the dataset had them), the means and the folder's settings."""

    heads: Float[Tensor, "n n_kept n_heads d_out"]
    layers: list[int]
    embed: Float[Tensor, "n d_out"]
    embedding: Float[Tensor, "n d_out"]
    labels: Int[Tensor, " n"] | None
    indices: Int[Tensor, " n"]
    means: dict[str, Tensor]
    normalized: bool
    n_layers: int


def load_head_rows(folder: str | Path) -> HeadRows:
    """Heads, embed, embedding, indices, labels and means of a finished collection (parts heads,embed,means)."""
    meta = require_parts(folder, TEXTSPAN_PARTS, "TextSpan")
    identity = meta["identity"]
    rows = read_parts(folder, ["heads", "embed", "embedding", "indices", "labels"])
    means = read_means(folder)
    return HeadRows(heads=rows["heads"].float(), layers=list(identity["layers"]), embed=rows["embed"].float(),
                    embedding=rows["embedding"], labels=rows.get("labels"), indices=rows["indices"], means=means,
                    normalized=identity["normalize"], n_layers=means["attns"].shape[0])


def load_decomposition(folder: str | Path) -> tuple[Decomposition, dict[str, Tensor], torch.Tensor | None]:
    """A finished collection as (``Decomposition`` of every image, means, labels) for post-hoc ablation
    (``ablation.ablate_posthoc``, ``cumulative_layer_curve``); needs parts heads, embed, layers, mlps, means.

    The parts sum back to the embedding: embed + Σ_l attns_l + Σ_l mlps_l = y (divided by ‖y‖ when normalised).
    """
    meta = require_parts(folder, ABLATION_PARTS, "ablation")
    identity = meta["identity"]
    rows = read_parts(folder, ["heads", "embed", "attns", "mlps", "embedding", "labels"])
    parts = Decomposition(rows["embed"].float(), rows["attns"].float(), rows["mlps"].float(), rows["heads"].float(),
                          list(identity["layers"]), rows["embedding"], "equal_share", identity["normalize"])
    return parts, read_means(folder), rows.get("labels")
