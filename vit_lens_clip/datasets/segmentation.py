"""Foreground/background segmentation datasets whose masks follow the image through the same preprocess geometry.

Each item is a dict:

- ``image``: ``preprocess(PIL image)``, the model input;
- ``mask``: bool [S_h, S_w], the ground truth carried through the SAME resize + centre crop as the image
  (nearest), not squashed to S x S;
- ``index``, ``name``;
- with ``include_original=True`` (default): ``original_image`` uint8 [H0, W0, 3], ``original_mask`` bool
  [H0, W0] and ``geometry`` (:class:`PreprocessGeometry`, to map heatmaps back onto the original).

Use :func:`collate_segmentation` with a ``DataLoader``: it stacks ``image``/``mask``/``index`` and keeps the
rest (different sizes per image) as lists.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from vit_lens_clip.datasets.geometry import PreprocessGeometry

# what Pillow raises on truncated, corrupt or oversized files
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def make_item(
    index: int,
    name: str,
    image: np.ndarray,
    mask: np.ndarray,
    preprocess: Callable,
    include_original: bool,
) -> dict[str, Any]:
    """Preprocess an RGB uint8 image [H0, W0, 3] and carry its bool mask [H0, W0] through the same geometry."""
    geometry = PreprocessGeometry.from_transform(preprocess, image.shape[:2])
    model_input = preprocess(Image.fromarray(image))
    if isinstance(model_input, torch.Tensor) and tuple(model_input.shape[-2:]) != geometry.output_size:
        raise ValueError(
            f"preprocess produced {tuple(model_input.shape[-2:])} but its geometry predicts {geometry.output_size}"
        )
    item = {
        "image": model_input,
        "mask": geometry.mask_to_model_input(torch.from_numpy(mask)),
        "index": index,
        "name": name,
    }
    if include_original:
        item["original_image"] = torch.from_numpy(np.ascontiguousarray(image))
        item["original_mask"] = torch.from_numpy(np.ascontiguousarray(mask))
        item["geometry"] = geometry
    return item


def collate_segmentation(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack ``image``, ``mask`` and ``index`` across the batch; every other key becomes a list."""
    if not batch:
        raise ValueError("empty batch")
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        if key in ("image", "mask"):
            out[key] = torch.stack(values)
        elif key == "index":
            out[key] = torch.tensor(values, dtype=torch.long)
        else:
            out[key] = values
    return out


def segmentation_loader(dataset: Dataset, batch_size: int, limit: int | None = None) -> DataLoader:
    """The first ``limit`` items of ``dataset`` (all when None) in order, batched by ``collate_segmentation``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_segmentation)


# ------------------------------------------------------------------------------------- ImageNet-segmentation
def _require_h5py():
    try:
        import h5py
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "ImageNetSegmentation reads MATLAB v7.3 files with h5py: pip install 'vit_lens_clip[seg]'"
        ) from err
    return h5py


def _image_from_matlab(array: np.ndarray) -> np.ndarray:
    """MATLAB stores column-major: an H x W x 3 image reads back as [3, W, H], a grey one as [W, H]."""
    if array.ndim == 2:
        array = np.repeat(array.T[:, :, None], 3, axis=2)
    elif array.ndim == 3:
        array = array.transpose(2, 1, 0)
        if array.shape[2] == 1:
            array = np.repeat(array, 3, axis=2)
        elif array.shape[2] == 4:
            array = array[:, :, :3]
        elif array.shape[2] != 3:
            raise ValueError(f"unexpected image layout {array.shape} in the .mat file")
    else:
        raise ValueError(f"unexpected image layout {array.shape} in the .mat file")
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return array


class ImageNetSegmentation(Dataset):
    """The ImageNet-segmentation benchmark (4,276 images with foreground masks), read from ``gtsegs_ijcv.mat``.

    Layout of the MATLAB v7.3 (HDF5) file: ``value/img`` and ``value/gt`` are [N, 1] arrays of object
    references. ``img[i, 0]`` points to a uint8 [3, W, H] array (the transposed H x W x 3 image);
    ``gt[i, 0]`` points to a 1 x 1 cell, itself a reference whose target is the [W, H] mask (nonzero =
    foreground). ``value/id``, if present, points to uint16 character codes of the image's id, used as ``name``.

    The HDF5 file is opened lazily and reopened in each DataLoader worker process.
    """

    def __init__(self, path_to_gtsegs_ijcv_mat: str | os.PathLike, preprocess: Callable, include_original: bool = True):
        h5py = _require_h5py()
        self.path = Path(path_to_gtsegs_ijcv_mat)
        if not self.path.is_file():
            raise FileNotFoundError(f"ImageNet-segmentation file not found: {self.path}")
        self.preprocess = preprocess
        self.include_original = include_original
        with h5py.File(self.path, "r") as f:
            for key in ("value/img", "value/gt"):
                if key not in f:
                    raise ValueError(f"{self.path} has no dataset '{key}'; is it gtsegs_ijcv.mat?")
            self._length = f["value/img"].shape[0]
            if f["value/gt"].shape[0] != self._length:
                raise ValueError(f"{self.path}: {self._length} images but {f['value/gt'].shape[0]} masks")
        self._file = None
        self._file_pid: int | None = None

    def __len__(self) -> int:
        return self._length

    def _handle(self):
        if self._file is None or self._file_pid != os.getpid():
            self._file = _require_h5py().File(self.path, "r")
            self._file_pid = os.getpid()
        return self._file

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"], state["_file_pid"] = None, None
        return state

    def close(self) -> None:
        if self._file is not None and self._file_pid == os.getpid():
            self._file.close()
        self._file, self._file_pid = None, None

    def _name(self, f, index: int) -> str:
        try:
            codes = np.asarray(f[f["value/id"][index, 0]]).ravel()
            name = "".join(chr(int(c)) for c in codes if int(c) != 0).strip()
            return name or str(index)
        except (KeyError, ValueError, TypeError):
            return str(index)

    def read_original(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Original RGB image uint8 [H0, W0, 3], bool mask [H0, W0] and name of item ``index``."""
        if not -self._length <= index < self._length:
            raise IndexError(f"index {index} out of range for {self._length} images")
        index %= self._length
        f = self._handle()
        image = _image_from_matlab(np.asarray(f[f["value/img"][index, 0]]))
        cell = f[f["value/gt"][index, 0]]
        target = cell[0, 0] if cell.dtype.kind == "O" else None
        mask_array = np.asarray(f[target]) if target is not None else np.asarray(cell)
        mask = np.asarray(mask_array).T != 0
        if mask.shape != image.shape[:2]:
            raise ValueError(f"item {index}: mask {mask.shape} does not match image {image.shape[:2]}")
        return image, mask, self._name(f, index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask, name = self.read_original(index)
        return make_item(index % self._length, name, image, mask, self.preprocess, self.include_original)


# ----------------------------------------------------------------------------------------------- MaskFolder
class SkippedFile(NamedTuple):
    path: str
    reason: str


def _read_mask(path: Path) -> np.ndarray:
    """Bool mask of a mask image: any nonzero stored value (palette index, grey level, colour) is foreground."""
    with Image.open(path) as im:
        im.load()
        array = np.array(im)
        if im.mode in ("RGBA", "LA", "PA"):
            array = array[..., :-1]
    return array.any(axis=-1) if array.ndim == 3 else array != 0


def _read_image(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        return np.array(im.convert("RGB"))


class MaskFolder(Dataset):
    """Images in ``root/images/`` paired by file stem with masks in ``root/masks/`` (nonzero = foreground).

    At construction every pair is decoded once; unreadable or corrupt files, images without a mask, masks
    without an image, duplicate stems and image/mask size mismatches are left out and listed in ``.skipped``
    as ``SkippedFile(path, reason)``. Missing folders raise ``FileNotFoundError``; no usable pair raises
    ``ValueError``. EXIF orientation is not applied (masks are assumed to match the stored pixel grid).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        preprocess: Callable,
        include_original: bool = True,
        mask_extensions: Sequence[str] = (".png",),
        image_extensions: Sequence[str] = IMAGE_EXTENSIONS,
        show_progress: bool = False,
    ):
        self.root = Path(root)
        self.preprocess = preprocess
        self.include_original = include_original
        image_dir, mask_dir = self.root / "images", self.root / "masks"
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                raise FileNotFoundError(f"MaskFolder needs {folder} (layout: root/images/, root/masks/)")
        self.skipped: list[SkippedFile] = []
        images = self._by_stem(image_dir, image_extensions)
        masks = self._by_stem(mask_dir, mask_extensions)
        for stem in sorted(set(masks) - set(images)):
            self.skipped.append(SkippedFile(str(masks[stem]), "mask without an image"))

        self.pairs: list[tuple[Path, Path]] = []
        candidates = []
        for stem in sorted(images):
            if stem in masks:
                candidates.append(stem)
            else:
                self.skipped.append(SkippedFile(str(images[stem]), "image without a mask"))
        for stem in tqdm(candidates, desc="checking image/mask pairs", disable=not show_progress):
            image_path, mask_path = images[stem], masks[stem]
            try:
                size = _read_image(image_path).shape[:2]
            except _DECODE_ERRORS as err:  # corrupt or unsupported files are data problems, not fatal
                self.skipped.append(SkippedFile(str(image_path), f"unreadable image: {err}"))
                continue
            try:
                mask_size = _read_mask(mask_path).shape
            except _DECODE_ERRORS as err:
                self.skipped.append(SkippedFile(str(mask_path), f"unreadable mask: {err}"))
                continue
            if mask_size != size:
                self.skipped.append(SkippedFile(str(image_path), f"mask size {mask_size} differs from image {size}"))
                continue
            self.pairs.append((image_path, mask_path))
        if not self.pairs:
            raise ValueError(
                f"no usable image/mask pairs under {self.root} ({len(self.skipped)} files skipped: "
                f"{[s.reason for s in self.skipped[:3]]})"
            )

    def _by_stem(self, folder: Path, extensions: Sequence[str]) -> dict[str, Path]:
        allowed = {e.lower() for e in extensions}
        found: dict[str, list[Path]] = {}
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix.lower() in allowed:
                found.setdefault(path.stem, []).append(path)
        unique = {}
        for stem, paths in found.items():
            if len(paths) > 1:
                self.skipped.extend(SkippedFile(str(p), f"several files share the stem '{stem}'") for p in paths)
            else:
                unique[stem] = paths[0]
        return unique

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path, mask_path = self.pairs[index]
        index %= len(self.pairs)
        return make_item(
            index,
            image_path.stem,
            _read_image(image_path),
            _read_mask(mask_path),
            self.preprocess,
            self.include_original,
        )
