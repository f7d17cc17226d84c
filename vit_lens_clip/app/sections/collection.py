"""``report --from DIR``: the values the data and decomposition sections give, read from a collection folder.

A folder of ``vit-lens-clip collect`` holds per-image parts, never images. What it holds decides what the
report computes: parts heads, embed, means give the head contributions (TextSpan, head search, completeness,
zero-shot on the stored embeddings); adding layers, mlps gives the full decomposition (layer mean-ablation).
Every value the folder cannot give is recorded in ``ctx.missing`` with the reason, so each section that needs
it is skipped with that line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from vit_lens_clip.app.sections.base import ReportContext, Task
from vit_lens_clip.app.sections.tasks import class_names_file, class_task, shapes_tasks
from vit_lens_clip.datasets.shapes_adapters import ShapesScenes
from vit_lens_clip.datasets.sources import open_dataset
from vit_lens_clip.decompose.store import ABLATION_PARTS, TEXTSPAN_PARTS, StoredParts, parts_hint
from vit_lens_clip.distributed.collection import read_collection_info
from vit_lens_clip.errors import BadInputError

SHAPES_FINGERPRINT = re.compile(r"shapes:n=(\d+),seed=(-?\d+)")


def _class_names(ctx: ReportContext, dataset: str) -> list[str] | None:
    """Class names of a collected dataset: ``--classes``, ImageNet's (imagenet-val), or the class sub-folders
    of a ``labelled:PATH`` folder that is still on disk."""
    kind, _, rest = dataset.partition(":")
    root = Path(rest.rsplit(":", 2)[0])  # fingerprint "labelled:ROOT:n=N:DIGEST"
    if ctx.config.classes:
        return class_names_file(ctx.config.classes)
    if kind == "imagenet-val":
        return list(IMAGENET_CLASSNAMES)
    if kind == "labelled" and root.is_dir():
        data, fingerprint = open_dataset(f"labelled:{root}", ctx.loaded.preprocess)
        if fingerprint != dataset:  # other files or classes now: its class list may no longer match the labels
            raise BadInputError(f"{root} changed since it was collected (its files differ from the collection's); "
                                "pass --classes FILE with the class names of the collection")
        return [c.replace("_", " ") for c in data.classes]
    return None


def folder_tasks(ctx: ReportContext, identity: dict[str, Any], indices: torch.Tensor,
                 labels: torch.Tensor | None) -> tuple[list[Task], str | None]:
    """The zero-shot tasks of the collected dataset (those the data section builds for the same images), and
    why there are none when there are none. Task labels are indexed by dataset index.

    The shapes world's attribute labels are regenerated from its (n, seed) in the folder's identity.
    """
    shapes = SHAPES_FINGERPRINT.fullmatch(identity["dataset"])
    if shapes:
        scenes = ShapesScenes(int(shapes.group(1)), ctx.loaded.preprocess, seed=int(shapes.group(2)))
        return shapes_tasks(ctx, scenes.attribute_labels), None
    names = _class_names(ctx, identity["dataset"])
    if names is None:
        kind = identity["dataset"].partition(":")[0]
        return [], f"the collected dataset ({kind}) has no class names; pass --classes FILE"
    full = torch.full((identity["n"],), -1, dtype=torch.long)  # −1: unlabelled (agreement with predictions)
    if labels is not None:
        if int(labels.max()) >= len(names):
            raise ValueError(f"the folder's labels reach class {int(labels.max())}, but there are {len(names)} class names")
        full[indices] = labels.long()
    return [class_task(ctx, names, full)], None


def load_collection(ctx: ReportContext) -> None:
    """Set ``ctx.values`` from ``ctx.config.source``: contributions, means, parts, tasks (what the folder holds)."""
    folder = ctx.config.source
    meta = read_collection_info(folder)
    identity = meta["identity"]
    no_images = f"report --from reads per-image parts from {folder}, which holds no images"
    ctx.missing.update(dataset=no_images, images=no_images)
    ctx.numbers["collection"] = {"folder": str(folder), "world_size": meta["world_size"], **identity}
    stored = StoredParts(folder)
    lacking = stored.missing(TEXTSPAN_PARTS)
    if lacking:
        reason = f"{folder} lacks parts {lacking}: {parts_hint(TEXTSPAN_PARTS)}"
        ctx.missing.update(contributions=reason, means=reason, tasks=reason)
        return
    contributions = stored.contributions()
    ctx.values.contributions, ctx.values.means = contributions, contributions.means
    lacking = stored.missing(ABLATION_PARTS)
    if lacking:
        ctx.missing["parts"] = f"{folder} lacks parts {lacking}: {parts_hint(ABLATION_PARTS)}"
    else:
        ctx.values.parts = stored.decomposition()[0]
    tasks, why_none = folder_tasks(ctx, identity, contributions.indices, contributions.labels)
    ctx.values.tasks = tasks
    if why_none:
        ctx.missing["tasks"] = why_none
