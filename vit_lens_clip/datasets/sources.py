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

from vit_lens_clip.datasets.folder import IMAGE_EXTENSIONS, ImageFolder, to_rgb
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
        # (shard, key, image member, .cls member); a shard that cannot be read whole adds one entry with the image
        # member None and the reason as key: it is skipped and listed when read, like an unreadable image
        self.samples: list[tuple[int, str, tarfile.TarInfo | None, tarfile.TarInfo | None]] = []
        for s, path in enumerate(self.shards):
            members, problem = self._members(path)
            for key, exts in members.items():
                image = next((exts[e] for e in exts if "." + e in IMAGE_EXTENSIONS), None)
                if image is not None:
                    self.samples.append((s, key, image, exts.get("cls")))
            if problem is not None:
                self.samples.append((s, problem, None, None))
        if not any(image is not None for _, _, image, _ in self.samples):
            raise ValueError(f"no readable images in the WebDataset shards {[str(s) for s in self.shards]}"
                             + (f" ({self.samples[0][1]})" if self.samples else ""))
        # labelled when any sample has a .cls: then a sample without one is skipped (its rows would lack a label)
        self.labelled = any(label is not None for _, _, _, label in self.samples)
        self._open: dict[int, tarfile.TarFile] = {}

    @staticmethod
    def _members(path: Path) -> tuple[dict[str, dict[str, tarfile.TarInfo]], str | None]:
        """The regular-file members of one shard by key and extension, and why the shard could not be read to its
        end (empty, truncated, not a tar), or None. Members are only ever read into memory, never extracted, so
        names such as ``../x`` or ``/etc/x`` write nothing anywhere."""
        members: dict[str, dict[str, tarfile.TarInfo]] = {}
        problem = None
        try:
            with tarfile.open(path) as tar:
                while True:
                    m = tar.next()
                    if m is None:
                        break
                    folder, _, base = m.name.rpartition("/")
                    key, dot, ext = base.partition(".")
                    if m.isfile() and dot:
                        members.setdefault(f"{folder}/{key}" if folder else key, {})[ext.lower()] = m
                end = tar.offset  # where tarfile stopped: past it only the zero blocks of the archive's end
            size = path.stat().st_size
            cut = [m for exts in members.values() for m in exts.values() if m.offset_data + m.size > size]
            with open(path, "rb") as f:
                f.seek(end)
                rest = f.read(1 << 16)
            if cut:
                problem = f"truncated tar: member {cut[0].name} ends past the end of the file"
            elif rest.strip(b"\0"):  # tarfile stops silently at a header cut short
                problem = f"truncated tar: unreadable data at byte {end} of {size}"
        except (tarfile.TarError, OSError, EOFError) as e:
            why = "empty file" if path.stat().st_size == 0 else f"{type(e).__name__}: {e}"
            problem = (f"{'truncated' if 'unexpected end' in str(e) else 'unreadable'} tar ({why})"
                       + (f"; {sum(map(len, members.values()))} member(s) before it kept" if members else ""))
        return members, problem

    def __len__(self) -> int:
        return len(self.samples)

    def fingerprint(self) -> str:
        """Each shard's name, size and mtime, and every sample's key and member size."""
        shards = [f"{p.name}\0{p.stat().st_size}\0{p.stat().st_mtime_ns}" for p in self.shards]
        return _digest(shards + [f"{self.shards[s].name}/{key}\0{image.size if image else -1}"
                                 for s, key, image, _ in self.samples])

    def _tar(self, s: int) -> tarfile.TarFile:
        if s not in self._open:  # opened lazily, so each DataLoader worker gets its own handle
            self._open[s] = tarfile.open(self.shards[s])  # noqa: SIM115 (kept open for later items)
        return self._open[s]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": {}}

    def __getitem__(self, i: int) -> dict[str, Any]:
        s, key, image, label = self.samples[i]
        item: dict[str, Any] = {"index": i, "name": f"{self.shards[s].name}/{key}"}
        if image is None:  # the rest of an unreadable shard
            item["name"], item["error"] = self.shards[s].name, key
            return item
        if label is None and self.labelled:
            item["error"] = "no .cls label (other samples of the shards have one)"
            return item
        try:
            tar = self._tar(s)
            if label is not None:
                text = tar.extractfile(label).read().decode("utf-8", "replace").strip()
                try:
                    item["label"] = int(text)
                except ValueError:
                    item["error"] = f"label {label.name} is not an integer: {text[:40]!r}"
                    return item
            data = tar.extractfile(image).read()
            if len(data) != image.size:
                raise EOFError(f"member {image.name} is truncated ({len(data)} of {image.size} bytes)")
            with Image.open(io.BytesIO(data)) as im:
                item["image"] = self.preprocess(to_rgb(im))
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
        ident = data.identity()  # names, sizes, mtimes, labels and a content hash of a sample (folder.py)
        return data, (f"{kind}:{data.root.resolve()}:n={ident['n']}:"
                      f"{_digest([ident['files_sha256'], ident['sample_content_sha256']])}")
    if kind == "wds":
        paths = sorted(Path(arg).glob("*.tar")) if Path(arg).is_dir() else [Path(p) for p in arg.split(",")]
        data = WebDatasetShards(paths, preprocess)
        return data, f"wds:n={len(data)}:{data.fingerprint()}"
    raise ValueError(f"unknown dataset kind {kind!r}; use shapes:N, folder:PATH, labelled:PATH, imagenet-val:PATH or wds:SHARDS")
