"""methods/textspan/ties.py: the default tie tolerances (by dtype name, torch or NumPy spelling) sit far above
each dtype's rounding and far below meaningful differences; both TextSpan implementations break exact ties
(duplicate texts) by the lowest index in float64 and float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vit_lens_clip.methods.textspan.algorithm import text_span
from vit_lens_clip.methods.textspan.reference import text_span_reference
from vit_lens_clip.methods.textspan.ties import default_tie_rtol


@pytest.mark.parametrize("spelling", ["float64", "torch.float64", str(torch.float64), np.dtype(np.float64).name])
def test_float64_spellings(spelling):
    assert default_tie_rtol(spelling) == default_tie_rtol("float64")


def test_float32_spellings():
    assert default_tie_rtol(str(torch.float32)) == default_tie_rtol(np.dtype(np.float32).name) == default_tie_rtol("float32")


@pytest.mark.parametrize("dtype, eps", [(torch.float64, np.finfo(np.float64).eps),
                                        (torch.float32, np.finfo(np.float32).eps)])
def test_tolerance_is_far_above_rounding_and_far_below_meaningful_differences(dtype, eps):
    rtol = default_tie_rtol(str(dtype))
    assert 50 * eps <= rtol <= 1e-4
    assert default_tie_rtol("float64") < default_tie_rtol("float32")


@pytest.mark.parametrize("name", ["float16", "bfloat16", "int64", "double", "torch.float16"])
def test_other_dtypes_are_refused(name):
    with pytest.raises(ValueError, match="TextSpan runs in float64 or float32"):
        default_tie_rtol(name)


def duplicate_text_problem():
    """A head varying mostly along one text that is in the pool twice (indices 2 and 4)."""
    g = torch.Generator().manual_seed(0)
    T = torch.nn.functional.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=-1)
    T[4] = T[2]
    C = torch.randn(40, 1, generator=g, dtype=torch.float64) * 5 * T[2] + 0.1 * torch.randn(40, 8, generator=g,
                                                                                           dtype=torch.float64)
    return C, T


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_duplicate_texts_resolve_to_the_lowest_index_in_both_implementations(dtype):
    C, T = duplicate_text_problem()
    batched = text_span(C, T, k=3, rank=8, dtype=dtype)
    reference = text_span_reference(C.numpy(), T.numpy(), k=3, rank=8,
                                    dtype=np.float64 if dtype == torch.float64 else np.float32)
    assert int(batched.indices[0]) == 2 == int(reference.indices[0])
    assert 4 not in batched.indices.tolist()[:2]  # the duplicate has nothing left to explain after the pick
    assert batched.indices.tolist() == reference.indices.tolist()
