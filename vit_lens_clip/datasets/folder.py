"""Image folders and the batch format the reducers consume; unreadable images are skipped and listed."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class Batch:
    """A collated batch: images that loaded, their dataset indices (and labels), and what was skipped."""

    images: Optional[Float[Tensor, "batch channel height width"]]
    indices: Int[Tensor, " batch"]
    labels: Optional[Int[Tensor, " batch"]] = None
    names: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.indices.numel())

    def pin_memory(self) -> "Batch":
        """Page-locked images (called by a DataLoader with ``pin_memory=True``) for faster copies to a GPU."""
        if self.images is not None:
            self.images = self.images.pin_memory()
        return self


def collate_images(items: Sequence[dict[str, Any]]) -> Batch:
    """Stack the items that loaded; items with an ``error`` key are listed in ``skipped``."""
    ok = [it for it in items if it.get("error") is None]
    skipped = [(str(it.get("name", it.get("index"))), str(it["error"])) for it in items if it.get("error") is not None]
    images = torch.stack([it["image"] for it in ok]) if ok else None
    indices = torch.tensor([int(it["index"]) for it in ok], dtype=torch.long)
    labels = None
    if ok and ok[0].get("label") is not None:
        labels = torch.tensor([int(it["label"]) for it in ok], dtype=torch.long)
    return Batch(images, indices, labels, [str(it.get("name", it["index"])) for it in ok], skipped)


def is_hidden(relative: Path) -> bool:
    """A file under a hidden folder or hidden itself (``.ipynb_checkpoints/``, ``.git/``, ``._x.jpg``)."""
    return any(part.startswith(".") for part in relative.parts)


def printable_name(relative: Path) -> str:
    """A file name as text; bytes that are not UTF-8 shown as ``\\xNN``."""
    return os.fsencode(str(relative)).decode("utf-8", "backslashreplace")


def utf8_name(relative: Path) -> bool:
    try:
        str(relative).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def sample_indices(n: int) -> list[int]:
    """The files whose content a folder's identity hashes: first two, eight evenly spaced, last (all of a small
    folder)."""
    picks = {0, 1, n - 1} | {round(i * (n - 1) / 9) for i in range(1, 9)}
    return sorted(i for i in picks if 0 <= i < n)


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB with the image's real range: 16-bit and 32-bit grey images (``I;16``, ``I``, ``F``) are scaled to 0..255
    from their full range (65535 for 16-bit), where PIL's ``convert`` would clip every value above 255."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or values.max(initial=0) <= 65535 else float(values.max())
        scaled = np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled).convert("RGB")
    return im.convert("RGB")


class ImageFolder(Dataset):
    """Images under ``root`` (recursively), sorted; with ``labelled=True`` the first-level folder is the class.

    Items are dicts {image, index, name[, label]} or {index, name, error} for files that cannot be decoded.
    """

    def __init__(self, root: str | Path, preprocess: Callable, labelled: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        found = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                       and not is_hidden(p.relative_to(self.root)) and p.is_file())
        self.skipped: list[tuple[str, str]] = []  # (name, reason) of files left out; run_reducers reports them
        self.files = found  # a file whose name is not UTF-8 stays an item that is skipped and listed when read
        if not self.files:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {self.root}")
        self.preprocess = preprocess
        self.classes: list[str] = []
        self.labels: list[int] = []
        if labelled:
            self.classes = sorted({p.relative_to(self.root).parts[0] for p in self.files if p.parent != self.root})
            if not self.classes:
                raise ValueError(f"labelled=True needs class sub-folders under {self.root}")
            index = {c: i for i, c in enumerate(self.classes)}
            self.skipped += [(printable_name(p.relative_to(self.root)), "image outside the class folders (no label)")
                             for p in self.files if p.parent == self.root]
            self.files = [p for p in self.files if p.parent != self.root]
            self.labels = [index[p.relative_to(self.root).parts[0]] for p in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def identity(self) -> dict[str, Any]:
        """What the folder holds: every file's name, size, mtime (and label), and the sha256 of the content of a
        sample of files (``sample_indices``: all of a folder of up to 11 images). Images replaced under the same
        names change the mtimes, and the sample's content even when sizes and mtimes are restored."""
        h = hashlib.sha256()
        for i, path in enumerate(self.files):
            st = path.stat()
            label = self.labels[i] if self.labels else None
            h.update(f"{printable_name(path.relative_to(self.root))}\0{st.st_size}\0{st.st_mtime_ns}\0{label}\n".encode())
        content = hashlib.sha256()
        for i in sample_indices(len(self.files)):
            content.update(f"{i}\0".encode())
            with open(self.files[i], "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    content.update(block)
        return {"kind": "ImageFolder", "root": str(self.root.resolve()), "n": len(self.files),
                "files_sha256": h.hexdigest(), "sample_content_sha256": content.hexdigest(),
                "preprocess": re.sub(r" at 0x[0-9a-fA-F]+", "", repr(self.preprocess))}

    def __getitem__(self, i: int) -> dict[str, Any]:
        path = self.files[i]
        relative = path.relative_to(self.root)
        item: dict[str, Any] = {"index": i, "name": printable_name(relative)}
        if self.labels:
            item["label"] = self.labels[i]
        if not utf8_name(relative):
            item["error"] = "file name is not valid UTF-8 (rename the file)"
            return item
        try:
            with Image.open(path) as im:
                item["image"] = self.preprocess(to_rgb(im))
        except Exception as e:  # corrupt, truncated or not an image: skip, never fatal
            item["error"] = f"{type(e).__name__}: {e}"
        return item


class TensorImages(Dataset):
    """Wrap in-memory images (already preprocessed tensors) and optional labels in the reducer item format."""

    def __init__(self, images: Float[Tensor, "n channel height width"], labels: Optional[Sequence[int]] = None):
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(labels)} labels for {len(images)} images")
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def identity(self) -> dict[str, Any]:
        """Content hash of every image (and the labels)."""
        h = hashlib.sha256()
        images = self.images.detach().cpu().contiguous()
        h.update(f"{images.dtype}{tuple(images.shape)}".encode())
        h.update(images.reshape(-1).view(torch.uint8).numpy().tobytes())
        h.update(repr(None if self.labels is None else [int(v) for v in self.labels]).encode())
        return {"kind": "TensorImages", "n": len(self.images), "sha256": h.hexdigest()}

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {"index": i, "name": str(i), "image": self.images[i]}
        if self.labels is not None:
            item["label"] = int(self.labels[i])
        return item
