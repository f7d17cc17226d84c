"""Segmentation datasets on tiny synthetic data: the mask follows the image through the same geometry."""

import pickle

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from vit_lens_clip.datasets.geometry import PreprocessGeometry
from vit_lens_clip.datasets.segmentation import (
    ImageNetSegmentation,
    MaskFolder,
    collate_segmentation,
)

h5py = pytest.importorskip("h5py")

PREPROCESS = open_clip.image_transform(image_size=64, is_train=False)
MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN)[:, None, None]
STD = torch.tensor(open_clip.OPENAI_DATASET_STD)[:, None, None]


def _picture(h, w, box, seed):
    """Dark, non-symmetric noisy background with a white rectangle box=(top, left, bottom, right)."""
    rng = np.random.default_rng(seed)
    img = (rng.random((h, w, 3)) * 60).astype(np.uint8)
    img[:, :, 0] += (np.arange(w) * 60 // w).astype(np.uint8)[None, :]  # left-right asymmetry
    mask = np.zeros((h, w), dtype=bool)
    t, l, b, r = box
    mask[t:b, l:r] = True
    img[mask] = 255
    return img, mask


def _bright(model_input):
    return (model_input * STD + MEAN).mean(0) > 0.6


def _iou(a, b):
    return float((a & b).sum() / (a | b).sum())


def _write_gtsegs(path, images, masks, ids):
    """A small file with the gtsegs_ijcv.mat v7.3 layout: reference arrays, MATLAB column-major payloads."""
    with h5py.File(path, "w") as f:
        store = f.create_group("#refs#")
        img_refs, gt_refs, id_refs = [], [], []
        for i, (img, mask, name) in enumerate(zip(images, masks, ids)):
            payload = img.transpose(2, 1, 0) if img.ndim == 3 else img.T
            img_refs.append(store.create_dataset(f"img{i}", data=payload).ref)
            mask_ds = store.create_dataset(f"gt{i}", data=mask.astype(np.uint8).T)
            cell = store.create_dataset(f"cell{i}", data=np.array([[mask_ds.ref]], dtype=h5py.ref_dtype))
            gt_refs.append(cell.ref)
            codes = np.array([[ord(c)] for c in name], dtype=np.uint16)
            id_refs.append(store.create_dataset(f"id{i}", data=codes).ref)
        value = f.create_group("value")
        for key, refs in (("img", img_refs), ("gt", gt_refs), ("id", id_refs)):
            value.create_dataset(key, data=np.array(refs, dtype=h5py.ref_dtype).reshape(-1, 1))


@pytest.fixture
def mat_file(tmp_path):
    wide_img, wide_mask = _picture(40, 70, (8, 44, 32, 66), seed=0)  # square near the right edge
    tall_img, tall_mask = _picture(90, 50, (5, 10, 30, 40), seed=1)
    grey = tall_img[:, :, 1].copy()  # stored as a 2-D (grey) MATLAB array
    path = tmp_path / "gtsegs_ijcv.mat"
    _write_gtsegs(path, [wide_img, grey], [wide_mask, tall_mask], ["n01440764_10", "n02102040_7"])
    return path, [(wide_img, wide_mask), (np.repeat(grey[:, :, None], 3, 2), tall_mask)]


def test_imagenet_segmentation_reads_layout_and_aligns_mask(mat_file):
    path, originals = mat_file
    ds = ImageNetSegmentation(path, PREPROCESS)
    assert len(ds) == 2
    for index, (img, mask) in enumerate(originals):
        item = ds[index]
        assert item["index"] == index and item["name"] == ["n01440764_10", "n02102040_7"][index]
        assert np.array_equal(item["original_image"].numpy(), img)  # transposes undone, grey -> RGB
        assert np.array_equal(item["original_mask"].numpy(), mask)
        torch.testing.assert_close(item["image"], PREPROCESS(Image.fromarray(img)))
        geometry = PreprocessGeometry.from_transform(PREPROCESS, img.shape[:2])
        assert item["geometry"] == geometry
        assert torch.equal(item["mask"], geometry.mask_to_model_input(mask))
        assert item["mask"].shape == (64, 64) and item["mask"].dtype == torch.bool
    # the wide image's square, near the cropped edge, sits where the preprocessed image shows it
    item = ds[0]
    bright = _bright(item["image"])
    squashed = F.interpolate(torch.from_numpy(originals[0][1])[None, None].float(), size=(64, 64))[0, 0].bool()
    assert _iou(item["mask"], bright) > 0.85
    assert _iou(squashed, bright) < _iou(item["mask"], bright) - 0.2
    ds.close()


def test_imagenet_segmentation_dataloader_and_pickling(mat_file):
    path, _ = mat_file
    ds = ImageNetSegmentation(path, PREPROCESS, include_original=False)
    first = ds[0]  # opens the HDF5 handle in this process
    assert set(first) == {"image", "mask", "index", "name"}
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[1]["mask"], ds[1]["mask"])
    for workers in (0, 1):
        batches = list(DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate_segmentation))
        assert len(batches) == 1
        batch = batches[0]
        assert batch["image"].shape == (2, 3, 64, 64) and batch["mask"].shape == (2, 64, 64)
        assert torch.equal(batch["index"], torch.tensor([0, 1])) and batch["name"][1] == "n02102040_7"
        assert torch.equal(batch["mask"][0], first["mask"])


def test_imagenet_segmentation_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        ImageNetSegmentation(tmp_path / "missing.mat", PREPROCESS)
    with h5py.File(tmp_path / "other.mat", "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(ValueError, match="value/img"):
        ImageNetSegmentation(tmp_path / "other.mat", PREPROCESS)


def _save(path, array, mode=None):
    Image.fromarray(array, mode=mode).save(path)


@pytest.fixture
def folder(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    a_img, a_mask = _picture(50, 80, (10, 50, 40, 76), seed=2)
    _save(images / "a.png", a_img)
    _save(masks / "a.png", (a_mask * 255).astype(np.uint8))
    b_img, b_mask = _picture(70, 40, (40, 5, 66, 35), seed=3)
    _save(images / "b.png", b_img)
    palette_mask = Image.fromarray(b_mask.astype(np.uint8), mode="L").convert("P")  # palette index 1 = object
    palette_mask.save(masks / "b.png")
    (images / "c.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    _save(masks / "c.png", (a_mask * 255).astype(np.uint8))
    _save(images / "d.png", a_img)  # no mask
    _save(masks / "e.png", (a_mask * 255).astype(np.uint8))  # no image
    _save(images / "f.png", a_img)
    _save(masks / "f.png", np.zeros((10, 10), dtype=np.uint8))  # wrong size
    (images / "notes.txt").write_text("ignored")
    return tmp_path, {"a": (a_img, a_mask), "b": (b_img, b_mask)}


def test_mask_folder_pairs_skips_and_aligns(folder):
    root, truth = folder
    ds = MaskFolder(root, PREPROCESS)
    assert len(ds) == 2 and [p[0].stem for p in ds.pairs] == ["a", "b"]
    reasons = {s.path.split("/")[-1]: s.reason for s in ds.skipped}
    assert set(reasons) == {"c.jpg", "d.png", "e.png", "f.png"}
    assert reasons["c.jpg"].startswith("unreadable image")
    assert reasons["d.png"] == "image without a mask" and reasons["e.png"] == "mask without an image"
    assert "differs" in reasons["f.png"]
    for index, name in enumerate(["a", "b"]):
        img, mask = truth[name]
        item = ds[index]
        assert item["name"] == name and item["index"] == index
        assert np.array_equal(item["original_mask"].numpy(), mask)
        assert torch.equal(
            item["mask"], PreprocessGeometry.from_transform(PREPROCESS, img.shape[:2]).mask_to_model_input(mask)
        )
        assert _iou(item["mask"], _bright(item["image"])) > 0.85
    batch = next(iter(DataLoader(ds, batch_size=2, collate_fn=collate_segmentation)))
    assert batch["mask"].shape == (2, 64, 64) and [g.original_size for g in batch["geometry"]] == [(50, 80), (70, 40)]


def test_mask_folder_clear_errors(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match="masks"):
        MaskFolder(tmp_path, PREPROCESS)
    (tmp_path / "masks").mkdir()
    _save(tmp_path / "images" / "x.png", np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="no usable image/mask pairs"):
        MaskFolder(tmp_path, PREPROCESS)
