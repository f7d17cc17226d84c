"""validation.py (text_embeddings is covered in tests/test_strict.py): layer/head indices with Python-style
negatives and no wrap-round, int-likes, image and embedding checks, output folders, text lists."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from conftest import type_checks_off

from vit_lens_clip.errors import BadInputError, OutputFolderError
from vit_lens_clip.validation import (
    MAX_ABS_PIXEL,
    check_embeddings,
    check_images,
    check_output_folder,
    head_index,
    head_indices,
    is_int_like,
    layer_index,
    layer_indices,
    text_list,
)


def test_layer_index_counts_negatives_from_the_end_and_never_wraps():
    n = 4
    assert [layer_index(i, n) for i in range(-n, n)] == [0, 1, 2, 3, 0, 1, 2, 3]
    for bad in (n, -n - 1, 100):
        with pytest.raises(BadInputError, match=f"layer {bad} out of range for a model with 4 layers"):
            layer_index(bad, n)
    with pytest.raises(BadInputError, match="^block 9 out of range"):
        layer_index(9, n, what="block")


def test_int_likes_are_accepted_and_other_types_refused():
    with type_checks_off():
        assert layer_index(np.int64(-1), 3) == 2
        assert layer_index(torch.tensor(1), 3) == 1
        assert isinstance(layer_index(torch.tensor([2]), 3), int)
        for bad in (True, 1.0, "1", torch.tensor(1.0), torch.tensor(True), np.bool_(True), None):
            with pytest.raises(BadInputError, match="layer must be an integer"):
                layer_index(bad, 3)
    assert is_int_like(5) and is_int_like(np.int32(5)) and is_int_like(torch.tensor([5]))
    assert not any(is_int_like(x) for x in (5.0, torch.tensor(5.0), torch.tensor([1, 2]), torch.tensor(True), "5", None))


def test_layer_indices_are_sorted_distinct_and_all_by_default():
    assert layer_indices(None, 3) == [0, 1, 2]
    assert layer_indices([2, -1, 0, 0], 3) == [0, 2]
    assert layer_indices(range(3), 3) == [0, 1, 2]
    assert layer_indices([], 3) == []
    with pytest.raises(BadInputError, match="out of range"):
        layer_indices([0, 3], 3)
    with type_checks_off():
        for scalar in (1, "01", torch.tensor(1)):
            with pytest.raises(BadInputError, match="layers must be a list of layer indices"):
                layer_indices(scalar, 3)


def test_head_index_checks_both_and_normalises_negatives():
    assert head_index(-1, -1, 3, 4) == (2, 3)
    assert head_index(0, 3, 3, 4) == (0, 3)
    with pytest.raises(BadInputError, match="head 4 out of range for a model with 4 heads per layer"):
        head_index(0, 4, 3, 4)
    with pytest.raises(BadInputError, match="layer 3 out of range"):
        head_index(3, 0, 3, 4)
    with type_checks_off(), pytest.raises(BadInputError, match="head must be an integer"):
        head_index(0, False, 3, 4)


def test_head_indices_need_pairs():
    assert head_indices([(0, 1), [-1, -2]], 3, 4) == [(0, 1), (2, 2)]
    for bad in ([(0, 1, 2)], [0], ["ab"]):
        with type_checks_off(), pytest.raises(BadInputError, match="heads must be \\(layer, head\\) pairs"):
            head_indices(bad, 3, 4)


def test_check_images_accepts_normalised_floats():
    check_images(torch.randn(2, 3, 8, 8))
    check_images(torch.full((1, 3, 4, 4), MAX_ABS_PIXEL))  # the bound itself is allowed
    check_images(torch.zeros(0, 3, 4, 4))


def test_check_images_refuses_raw_pixels():
    with type_checks_off():
        with pytest.raises(BadInputError, match="dtype torch.uint8: raw pixels"):
            check_images(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
        with pytest.raises(BadInputError, match="must be a torch.Tensor"):
            check_images(np.zeros((1, 3, 4, 4), dtype=np.float32))
    x = torch.randn(3, 3, 4, 4)
    x[2, 0, 0, 0] = 255.0
    with pytest.raises(BadInputError, match="^image 2 has a value of magnitude 255"):
        check_images(x)


def test_check_images_warns_naming_non_finite_images_and_still_checks_the_rest():
    x = torch.randn(4, 3, 4, 4)
    x[1, 0, 0, 0] = float("nan")
    x[3, 1, 1, 1] = float("-inf")
    with pytest.warns(RuntimeWarning, match=r"2 input image\(s\) contain NaN or inf \(batch indices 1, 3\)"):
        check_images(x)
    x[0, 0, 0, 0] = 300.0
    with warnings.catch_warnings(), pytest.raises(BadInputError, match="^image 0 "):
        warnings.simplefilter("ignore")
        check_images(x)


def test_check_embeddings():
    x = torch.nn.functional.normalize(torch.randn(3, 5), dim=-1)
    assert check_embeddings(x, 5, unit=True) is x
    assert check_embeddings(torch.zeros(0, 5), 5, unit=True).shape == (0, 5)
    with pytest.raises(BadInputError, match=r"^texts must be \[n, 5\], got shape \(3, 4\)"):
        check_embeddings(x[:, :4], 5)
    with pytest.raises(BadInputError, match="^images must be \\[n, 5\\]"):
        check_embeddings(x[0], 5, what="images")
    with pytest.raises(BadInputError, match="float tensor"):
        check_embeddings(torch.ones(3, 5, dtype=torch.int64), 5)
    with pytest.raises(BadInputError, match="NaN or inf"):
        check_embeddings(torch.full((1, 5), float("inf")), 5)
    y = x.clone()
    y[1] *= 1.01
    check_embeddings(y, 5)  # not asked to be unit
    with pytest.raises(BadInputError, match="must be unit vectors: row 1 has norm 1.01"):
        check_embeddings(y, 5, unit=True)
    y[1] = x[1] * (1 + 5e-4)
    check_embeddings(y, 5, unit=True)  # within the 1e-3 tolerance


def test_check_output_folder(tmp_path):
    new = tmp_path / "a" / "b"
    check_output_folder(new)
    assert new.is_dir()
    check_output_folder(new)  # an existing folder is fine
    file = tmp_path / "f"
    file.write_text("x")
    with pytest.raises(OutputFolderError, match=f"^--out {file} is a file, not a folder"):
        check_output_folder(file, "--out")
    with pytest.raises(OutputFolderError, match="cannot create output folder"):
        check_output_folder(file / "sub")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        try:
            with pytest.raises(OutputFolderError, match="is not writable"):
                check_output_folder(locked)
        finally:
            locked.chmod(0o700)


def test_text_list():
    assert text_list("a cat") == ["a cat"]
    assert text_list(("a", "b")) == ["a", "b"]
    with pytest.raises(BadInputError, match="non-empty list"):
        text_list([])
    with type_checks_off(), pytest.raises(BadInputError, match="got an item of type int"):
        text_list(["a", 3])
