"""model/components.py: LayerNorm (fused and hooked paths, hook values, dtypes), MLP, Attention (fused path ==
hooked path == a hand-written softmax(q kᵀ/√d) v, masks, cross-attention, pooled hooks and their edits) and
rotate() against complex multiplication."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import perturb_, rel_err

from vit_lens_clip.model.components import MLP, Attention, LayerNorm, quick_gelu, rotate
from vit_lens_clip.model.pooling import MeanReadout, NoPooledTokenError, TokenReadout

B, N, D = 2, 5, 12


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=dtype)


def ln(d: int = D, eps: float = 1e-5) -> LayerNorm:
    return perturb_(LayerNorm(d, eps), scale=0.5, seed=3)


# ----------------------------------------------------------------------------- LayerNorm
def test_layernorm_fused_path_matches_torch():
    norm, x = ln(), randn(B, N, D) * 3 + 1
    assert not torch.allclose(norm.w, torch.ones(D)) and not torch.allclose(norm.b, torch.zeros(D))
    expected = F.layer_norm(x, (D,), norm.w, norm.b, 1e-5)
    assert rel_err(norm(x), expected) <= 1e-6


def test_layernorm_hooked_path_matches_torch_and_hooks_see_scale_and_normalized():
    norm, x = ln(eps=1e-3), randn(B, N, D) * 3 + 1
    seen = {}
    norm.hook_scale.add_hook(lambda t, hook: seen.__setitem__("scale", t.clone()))
    norm.hook_normalized.add_hook(lambda t, hook: seen.__setitem__("normalized", t.clone()))
    out = norm(x)
    assert rel_err(out, F.layer_norm(x, (D,), norm.w, norm.b, 1e-3)) <= 1e-6
    x64 = x.double()
    scale = (x64.var(-1, unbiased=False, keepdim=True) + 1e-3).sqrt()
    assert seen["scale"].shape == (B, N, 1)
    assert rel_err(seen["scale"], scale) <= 1e-6
    assert rel_err(seen["normalized"], (x64 - x64.mean(-1, keepdim=True)) / scale) <= 1e-6


def test_layernorm_hook_edit_reaches_the_output():
    norm, x = ln(), randn(B, N, D)
    norm.hook_scale.add_hook(lambda t, hook: t * 2)  # a doubled scale halves the normalized vector
    out = norm(x)
    half = 0.5 * F.layer_norm(x, (D,), None, None, 1e-5)
    assert rel_err(out, half * norm.w + norm.b) <= 1e-6


@pytest.mark.parametrize("hooked", [False, True])
def test_layernorm_float64_stays_float64_at_float64_precision(hooked):
    norm = ln().double()
    if hooked:
        norm.hook_normalized.add_hook(lambda t, hook: t)
    x = randn(B, N, D, dtype=torch.float64) * 1e3 + 1e4  # a large mean: float32 statistics would lose digits
    out = norm(x)
    assert out.dtype == torch.float64
    assert rel_err(out, F.layer_norm(x, (D,), norm.w, norm.b, 1e-5)) <= 1e-12


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_layernorm_half_precision_input_is_normed_in_float32_and_returned_in_its_dtype(dtype):
    norm, x = ln(), randn(B, N, D).to(dtype)
    out = norm(x)
    assert out.dtype == dtype
    assert torch.equal(out, F.layer_norm(x.float(), (D,), norm.w, norm.b, 1e-5).to(dtype))


# ----------------------------------------------------------------------------------- MLP
@pytest.mark.parametrize("act_fn, act", [
    ("gelu", lambda t: F.gelu(t)),
    ("gelu_tanh", lambda t: F.gelu(t, approximate="tanh")),
    ("quick_gelu", lambda t: t * torch.sigmoid(1.702 * t)),
])
def test_mlp_is_act_of_affine_then_affine(act_fn, act):
    mlp = perturb_(MLP(D, 20, act_fn), scale=0.5)
    x = randn(B, N, D)
    seen = {}
    mlp.hook_pre.add_hook(lambda t, hook: seen.__setitem__("pre", t))
    mlp.hook_post.add_hook(lambda t, hook: seen.__setitem__("post", t))
    pre = x @ mlp.W_in + mlp.b_in
    out = act(pre) @ mlp.W_out + mlp.b_out
    assert rel_err(mlp(x), out) <= 1e-6
    assert rel_err(seen["pre"], pre) <= 1e-6 and rel_err(seen["post"], act(pre)) <= 1e-6


def test_the_three_activations_differ():
    x = torch.linspace(-3, 3, 61)
    assert not torch.allclose(F.gelu(x), quick_gelu(x), atol=1e-3)
    mlp = {a: MLP(1, 1, a) for a in ("gelu", "gelu_tanh", "quick_gelu")}
    for m in mlp.values():
        with torch.no_grad():
            m.W_in.fill_(1.0), m.W_out.fill_(1.0)
    outs = {a: m(x[None, :, None]).flatten() for a, m in mlp.items()}
    assert not torch.allclose(outs["gelu"], outs["gelu_tanh"], atol=1e-6)
    assert not torch.allclose(outs["gelu"], outs["quick_gelu"], atol=1e-3)


# ----------------------------------------------------------------------------- Attention
H, E, D_OUT = 3, 4, 10


def attention(readout=None, d_kv_in=None, seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    return perturb_(Attention(D, H, E, D_OUT, d_kv_in=d_kv_in, readout=readout), scale=0.5, seed=seed).eval()


def reference(attn: Attention, x: torch.Tensor, kv: torch.Tensor | None = None, mask=None):
    """softmax(q kᵀ / √d + mask) v per head, written out in float64, then Σ_h z_h W_O[h] + b_O."""
    kv = x if kv is None else kv
    p = {n: getattr(attn, n).detach().double() for n in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")}
    x, kv = x.double(), kv.double()
    out = p["b_O"].expand(x.shape[0], x.shape[1], -1).clone()
    patterns = []
    for h in range(attn.n_heads):
        q = x @ p["W_Q"][h] + p["b_Q"][h]
        k = kv @ p["W_K"][h] + p["b_K"][h]
        v = kv @ p["W_V"][h] + p["b_V"][h]
        scores = q @ k.transpose(-1, -2) / math.sqrt(attn.d_head)
        if mask is not None:
            scores = scores + mask[:, min(h, mask.shape[1] - 1)].double()
        pattern = scores.softmax(-1)
        patterns.append(pattern)
        out = out + (pattern @ v) @ p["W_O"][h]
    return out, torch.stack(patterns, 1)


def test_attention_fused_path_matches_the_hand_written_reference():
    attn, x = attention(TokenReadout(0)), randn(B, N, D)
    expected, _ = reference(attn, x)
    assert rel_err(attn(x), expected) <= 1e-5


def test_attention_hooked_path_matches_and_hooks_hold_the_reference_values():
    attn, x = attention(TokenReadout(0)), randn(B, N, D)
    expected, pattern = reference(attn, x)
    seen = {}
    for name in ("hook_pattern", "hook_result", "hook_attn_scores"):
        getattr(attn, name).add_hook(lambda t, hook, name=name: seen.__setitem__(name, t.clone()))
    out = attn(x)
    assert rel_err(out, expected) <= 1e-5
    assert seen["hook_pattern"].shape == (B, H, N, N)
    assert rel_err(seen["hook_pattern"], pattern) <= 1e-5
    assert torch.allclose(seen["hook_pattern"].sum(-1), torch.ones(B, H, N))
    assert rel_err(seen["hook_result"].sum(-2) + attn.b_O, expected) <= 1e-5  # result per head sums to the output
    assert rel_err(seen["hook_attn_scores"].softmax(-1), pattern) <= 1e-5


def test_attention_mask_and_cross_attention():
    attn = attention(TokenReadout(0), d_kv_in=7)
    x, kv = randn(B, 2, D), randn(B, 6, 7, seed=1)
    mask = torch.zeros(1, 1, 2, 6)
    mask[..., 4:] = -1e9  # the last two sources are masked out
    expected, pattern = reference(attn, x, kv, mask)
    assert pattern[..., 4:].abs().max() == 0
    assert rel_err(attn(x, kv, attn_mask=mask), expected) <= 1e-5
    attn.hook_pattern.add_hook(lambda t, hook: t)
    assert rel_err(attn(x, kv, attn_mask=mask), expected) <= 1e-5
    assert rel_err(attn(x, kv[:, :4]), expected) <= 1e-5  # masking a source is removing it
    seen = {}  # the pooled query's row, computed from q, k and the mask alone (no full pattern is hooked)
    attn.hook_pattern.remove_hooks()
    attn.hook_pooled_pattern.add_hook(lambda t, hook: seen.__setitem__("pooled", t.clone()))
    assert rel_err(attn(x, kv, attn_mask=mask), expected) <= 1e-5
    assert rel_err(seen["pooled"], pattern[:, :, 0]) <= 1e-5


def test_pooled_hooks_of_a_token_readout():
    attn, x = attention(TokenReadout(0)), randn(B, N, D)
    expected, pattern = reference(attn, x)
    seen = {}
    attn.hook_pooled_pattern.add_hook(lambda t, hook: seen.__setitem__("pooled", t.clone()))
    attn.hook_result_per_source.add_hook(lambda t, hook: seen.__setitem__("per_source", t.clone()))
    out = attn(x)
    assert rel_err(out, expected) <= 1e-5  # an unedited pooled hook changes nothing
    assert rel_err(seen["pooled"], pattern[:, :, 0]) <= 1e-5
    assert seen["per_source"].shape == (B, N, H, D_OUT)
    assert rel_err(seen["per_source"].sum((1, 2)) + attn.b_O, expected[:, 0]) <= 1e-5


def test_pooled_hooks_of_a_mean_readout_read_the_mean_of_the_patch_rows():
    attn, x = attention(MeanReadout(1)), randn(B, N, D)
    expected, pattern = reference(attn, x)
    seen = {}
    attn.hook_pooled_pattern.add_hook(lambda t, hook: seen.__setitem__("pooled", t.clone()))
    attn.hook_result_per_source.add_hook(lambda t, hook: seen.__setitem__("per_source", t.clone()))
    out = attn(x)
    assert rel_err(out, expected) <= 1e-5
    assert rel_err(seen["pooled"], pattern[:, :, 1:].mean(2)) <= 1e-5
    assert rel_err(seen["per_source"].sum((1, 2)) + attn.b_O, expected[:, 1:].mean(1)) <= 1e-5


def test_an_edit_of_the_pooled_pattern_moves_only_the_pooled_row_by_its_contribution():
    attn, x = attention(TokenReadout(0)), randn(B, N, D)
    expected, pattern = reference(attn, x)
    h, m = 1, 3

    def drop(t, hook):
        t = t.clone()
        t[:, h, m] = 0
        return t

    attn.hook_pooled_pattern.add_hook(drop)
    out = attn(x).double()
    v = x.double() @ attn.W_V[h].double() + attn.b_V[h].double()
    removed = pattern[:, h, 0, m, None] * (v[:, m] @ attn.W_O[h].double())  # A[h, m] · v[m, h] W_O[h]
    assert rel_err(out[:, 0], expected[:, 0] - removed) <= 1e-5
    assert rel_err(out[:, 1:], expected[:, 1:]) <= 1e-5  # the other queries' rows are untouched


def test_an_edit_of_the_per_source_results_moves_the_pooled_row_by_the_change():
    attn, x = attention(MeanReadout(1)), randn(B, N, D)
    expected, _ = reference(attn, x)
    seen = {}

    def zero_source(t, hook):
        seen["removed"] = t[:, 2].sum(1).clone()
        t = t.clone()
        t[:, 2] = 0
        return t

    attn.hook_result_per_source.add_hook(zero_source)
    out = attn(x)
    # a mean readout writes the change into every patch row, which moves their mean by exactly the change
    assert rel_err(out[:, 1:].double().mean(1), expected[:, 1:].mean(1) - seen["removed"].double()) <= 1e-5
    assert rel_err(out[:, 0], expected[:, 0]) <= 1e-5  # the prefix token is not read: unchanged


def test_a_trunk_without_readout_has_no_pooled_hooks():
    attn, x = attention(None), randn(B, N, D)
    assert not hasattr(attn, "hook_pooled_pattern") and not hasattr(attn, "hook_result_per_source")
    expected, _ = reference(attn, x)
    assert rel_err(attn(x), expected) <= 1e-5
    q = k = torch.zeros(B, N, H, E)
    with pytest.raises(NoPooledTokenError):
        attn.pooled_pattern(q, k)


def test_float64_attention_patterns_are_float64():
    attn, x = attention(TokenReadout(0)).double(), randn(B, N, D, dtype=torch.float64)
    expected, _ = reference(attn, x)
    attn.hook_pattern.add_hook(lambda t, hook: t)
    out = attn(x)
    assert out.dtype == torch.float64
    assert rel_err(out, expected) <= 1e-12


# -------------------------------------------------------------------------------- rotate
def angles(n_rot: int, n_freq: int) -> torch.Tensor:
    pos = torch.arange(n_rot, dtype=torch.float64)[:, None]
    return pos * 10000 ** (-torch.arange(n_freq, dtype=torch.float64) / n_freq)  # [n_rot, n_freq]


@pytest.mark.parametrize("half", [False, True])
def test_rotate_is_complex_multiplication_of_channel_pairs(half):
    batch, pos, heads, e, n_rot = 2, 6, 3, 8, 4
    x = randn(batch, pos, heads, e, dtype=torch.float64)
    theta = angles(n_rot, e // 2)
    if half:  # the pairs are (c, c + e/2)
        per_channel = torch.cat([theta, theta], -1)
        z = torch.complex(x[..., : e // 2], x[..., e // 2 :])
    else:  # the pairs are neighbouring channels (2c, 2c + 1)
        per_channel = theta.repeat_interleave(2, -1)
        z = torch.complex(x[..., 0::2], x[..., 1::2])
    table = torch.cat([per_channel.sin(), per_channel.cos()], -1)  # [n_rot, 2e]: [sin, cos]
    out = rotate(x, table, half)
    assert out.shape == x.shape
    assert torch.equal(out[:, : pos - n_rot], x[:, : pos - n_rot])  # the prefix positions are not rotated
    turned = z[:, pos - n_rot :] * torch.polar(torch.ones_like(theta), theta)[:, None, :]
    if half:
        expected = torch.cat([turned.real, turned.imag], -1)
    else:
        expected = torch.stack([turned.real, turned.imag], -1).flatten(-2)
    assert rel_err(out[:, pos - n_rot :], expected) <= 1e-12
    # a rotation keeps lengths
    assert torch.allclose(out.norm(dim=-1), x.norm(dim=-1))


def test_rotate_with_zero_angles_is_the_identity():
    x = randn(1, 5, 2, 8)
    table = torch.cat([torch.zeros(5, 8), torch.ones(5, 8)], -1)
    for half in (False, True):
        assert torch.equal(rotate(x, table, half), x)
