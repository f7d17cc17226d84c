"""Datasets named on the command line, as reducer items ({image, index, name[, label]}, see ``folder``).

``open_dataset("shapes:41", preprocess)`` and friends return the dataset and a fingerprint string that
identifies its contents (a collection folder records it and refuses another dataset):

- ``shapes:N``: N scenes of the shapes world (``--seed``), unlabelled;
- ``folder:PATH``: every image under PATH; ``labelled:PATH``: first-level sub-folders are the classes;
- ``imagenet-val:PATH``: the ImageNet validation layout (1000 WordNet-id folders, sorted = class index),
  with open_clip's class names;
- ``wds:SHARD[,SHARD...]`` or ``wds:DIR``: WebDataset tar shards (``key.jpg``/``.png``… with an optional
  ``key.cls``), read with random access by the standard ``tarfile`` module.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
from PIL import Image
from torch.utils.data import Dataset

from vit_lens_clip.datasets.folder import IMAGE_EXTENSIONS, ImageFolder
from vit_lens_clip.datasets.shapes_world import ShapesDataset


def _digest(names: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


class ShapesItems(ShapesDataset):
    """Shapes-world scenes in the reducer item format (item i is rendered from (seed, i))."""

    def __init__(self, n: int, preprocess: Callable, seed: int = 0):
        super().__init__(n, seed)
        self.preprocess = preprocess

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"index": i, "name": f"scene {i}", "image": self.preprocess(self.scene(i).pil())}


def imagenet_val(root: str | Path, preprocess: Callable) -> ImageFolder:
    """The ImageNet validation layout: 1000 WordNet-id folders; ``classes`` become open_clip's class names."""
    data = ImageFolder(root, preprocess, labelled=True)
    if len(data.classes) != len(IMAGENET_CLASSNAMES):
        raise ValueError(f"{root} has {len(data.classes)} class folders; the ImageNet validation layout has "
                         f"{len(IMAGENET_CLASSNAMES)} (one per WordNet id)")
    data.wordnet_ids, data.classes = data.classes, list(IMAGENET_CLASSNAMES)
    return data


class WebDatasetShards(Dataset):
    """Samples of WebDataset tar shards with random access: one image member per key, ``.cls`` as label.

    The member table is built once (tar headers only); samples are ordered by shard, then by position.
    """

    def __init__(self, shards: Sequence[str | Path], preprocess: Callable):
        self.shards = [Path(s) for s in shards]
        missing = [s for s in self.shards if not s.is_file()]
        if not self.shards or missing:
            raise FileNotFoundError(f"WebDataset shard not found: {missing[0] if missing else '(none given)'}")
        self.preprocess = preprocess
        self.samples: list[tuple[int, str, tarfile.TarInfo, tarfile.TarInfo | None]] = []
        for s, path in enumerate(self.shards):
            with tarfile.open(path) as tar:
                members: dict[str, dict[str, tarfile.TarInfo]] = {}
                for m in tar.getmembers():
                    folder, _, base = m.name.rpartition("/")
                    key, dot, ext = base.partition(".")
                    if m.isfile() and dot:
                        members.setdefault(f"{folder}/{key}" if folder else key, {})[ext.lower()] = m
            for key, exts in members.items():
                image = next((exts[e] for e in exts if "." + e in IMAGE_EXTENSIONS), None)
                if image is not None:
                    self.samples.append((s, key, image, exts.get("cls")))
        if not self.samples:
            raise ValueError(f"no images in the WebDataset shards {[str(s) for s in self.shards]}")
        self._open: dict[int, tarfile.TarFile] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def fingerprint(self) -> str:
        return _digest([f"{self.shards[s].name}/{key}" for s, key, _, _ in self.samples])

    def _tar(self, s: int) -> tarfile.TarFile:
        if s not in self._open:  # opened lazily, so each DataLoader worker gets its own handle
            self._open[s] = tarfile.open(self.shards[s])  # noqa: SIM115 (kept open for later items)
        return self._open[s]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": {}}

    def __getitem__(self, i: int) -> dict[str, Any]:
        s, key, image, label = self.samples[i]
        item: dict[str, Any] = {"index": i, "name": f"{self.shards[s].name}/{key}"}
        tar = self._tar(s)
        if label is not None:
            item["label"] = int(tar.extractfile(label).read().decode().strip())
        try:
            with Image.open(io.BytesIO(tar.extractfile(image).read())) as im:
                item["image"] = self.preprocess(im.convert("RGB"))
        except Exception as e:  # noqa: BLE001 - a corrupt member is skipped and listed, as in ImageFolder
            item["error"] = f"{type(e).__name__}: {e}"
        return item


def open_dataset(spec: str, preprocess: Callable, seed: int = 0) -> tuple[Dataset, str]:
    """The dataset a ``KIND:ARG`` string names (module docstring) and its fingerprint."""
    kind, _, arg = spec.partition(":")
    if not arg:
        raise ValueError(f"dataset {spec!r} must be KIND:ARG with KIND one of shapes, folder, labelled, imagenet-val, wds")
    if kind == "shapes":
        try:
            n = int(arg)
        except ValueError:
            raise ValueError(f"shapes:N needs a number of scenes, got {arg!r}") from None
        return ShapesItems(n, preprocess, seed), f"shapes:n={n},seed={seed}"
    if kind in ("folder", "labelled", "imagenet-val"):
        data = imagenet_val(arg, preprocess) if kind == "imagenet-val" else ImageFolder(arg, preprocess, kind == "labelled")
        names = [str(p.relative_to(data.root)) for p in data.files]
        return data, f"{kind}:{data.root.resolve()}:n={len(names)}:{_digest(names)}"
    if kind == "wds":
        paths = sorted(Path(arg).glob("*.tar")) if Path(arg).is_dir() else [Path(p) for p in arg.split(",")]
        data = WebDatasetShards(paths, preprocess)
        return data, f"wds:n={len(data)}:{data.fingerprint()}"
    raise ValueError(f"unknown dataset kind {kind!r}; use shapes:N, folder:PATH, labelled:PATH, imagenet-val:PATH or wds:SHARDS")
