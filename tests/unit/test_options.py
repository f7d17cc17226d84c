"""Numeric options against their ranges (options.py): one wording for every command line."""

import argparse

import pytest

from vit_lens_clip.errors import BadInputError
from vit_lens_clip.options import check_ranges, option_flag


def test_each_kind_of_range_and_options_left_out():
    ns = argparse.Namespace
    check_ranges(ns(batch_size=1, lr=0.1, frac=1.0, seed=None), {"batch_size": 1, "seed": 0}, ("lr",), ("frac",))
    with pytest.raises(BadInputError, match="^--batch-size must be at least 1; got 0$"):
        check_ranges(ns(batch_size=0), {"batch_size": 1})
    with pytest.raises(BadInputError, match="^--seed must not be negative; got -1$"):
        check_ranges(ns(seed=-1), {"seed": 0})
    with pytest.raises(BadInputError, match="^--lr must be positive; got 0.0$"):
        check_ranges(ns(lr=0.0), positive=("lr",))
    with pytest.raises(BadInputError, match=r"^--bird-fraction must lie in \[0, 1\]; got 1.5$"):
        check_ranges(ns(bird_fraction=1.5), fractions=("bird_fraction",))
    assert option_flag("segmentation_images") == "--segmentation-images"
