"""Image folders and the batch format the reducers consume (datasets/folder.py)."""

import pytest
import torch
from PIL import Image
from torchvision import transforms

from vit_lens_clip.datasets.folder import ImageFolder, TensorImages, collate_images

PREPROCESS = transforms.Compose([transforms.Resize((8, 8)), transforms.ToTensor()])


def _save(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), colour).save(path)


def test_folder_is_sorted_recursive_and_skips_what_does_not_decode(tmp_path):
    _save(tmp_path / "b.png", (255, 0, 0))
    _save(tmp_path / "sub" / "a.png", (0, 255, 0))
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored: not an image extension")
    folder = ImageFolder(tmp_path, PREPROCESS)
    assert [str(p.relative_to(tmp_path)) for p in folder.files] == ["b.png", "broken.jpg", "sub/a.png"]
    batch = collate_images([folder[i] for i in range(len(folder))])
    assert batch.images.shape == (2, 3, 8, 8) and batch.indices.tolist() == [0, 2]
    assert batch.names == ["b.png", "sub/a.png"] and batch.labels is None
    assert [name for name, _ in batch.skipped] == ["broken.jpg"] and "Error" in batch.skipped[0][1]
    assert torch.allclose(batch.images[0, 0], torch.ones(8, 8)) and batch.images[0, 1:].abs().max() == 0


def test_labelled_folder_takes_classes_from_first_level_folders(tmp_path):
    _save(tmp_path / "dog" / "1.png", (1, 2, 3))
    _save(tmp_path / "cat" / "x" / "2.png", (1, 2, 3))
    _save(tmp_path / "stray.png", (1, 2, 3))
    folder = ImageFolder(tmp_path, PREPROCESS, labelled=True)
    assert folder.classes == ["cat", "dog"] and folder.labels == [0, 1]
    assert folder.skipped == [("stray.png", "image outside the class folders (no label)")]
    assert collate_images([folder[0], folder[1]]).labels.tolist() == [0, 1]


def test_folder_identity_changes_when_the_data_does(tmp_path):
    _save(tmp_path / "a.png", (0, 0, 0))
    before = ImageFolder(tmp_path, PREPROCESS).identity()
    assert before == ImageFolder(tmp_path, PREPROCESS).identity()
    _save(tmp_path / "b.png", (0, 0, 0))
    after = ImageFolder(tmp_path, PREPROCESS).identity()
    assert after["n"] == 2 and after["files_sha256"] != before["files_sha256"]


def test_folder_refusals(tmp_path):
    with pytest.raises(FileNotFoundError):
        ImageFolder(tmp_path / "missing", PREPROCESS)
    with pytest.raises(ValueError, match="no images"):
        ImageFolder(tmp_path, PREPROCESS)
    _save(tmp_path / "only.png", (0, 0, 0))
    with pytest.raises(ValueError, match="class sub-folders"):
        ImageFolder(tmp_path, PREPROCESS, labelled=True)


def test_tensor_images_items_and_content_identity():
    images = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    data = TensorImages(images, labels=[2, 0, 1])
    batch = collate_images([data[i] for i in range(3)])
    assert torch.equal(batch.images, images) and batch.labels.tolist() == [2, 0, 1]
    changed = images.clone()
    changed[1, 0, 0, 0] += 1e-3
    assert TensorImages(changed, [2, 0, 1]).identity()["sha256"] != data.identity()["sha256"]
    assert TensorImages(images, [2, 0, 0]).identity()["sha256"] != data.identity()["sha256"]
    with pytest.raises(ValueError, match="labels for"):
        TensorImages(images, labels=[0])
