"""Second-order effects of neurons equal a brute-force hooked computation (float64, perturbed random weights)."""

from __future__ import annotations

import pytest
import torch
from conftest import rel_err, through_pooler, tiny_clip

from vit_lens_clip import HookedViT
from vit_lens_clip.decompose.reducers import run_reducers
from vit_lens_clip.methods.neurons.effects import (
    NeuronEffects,
    SecondOrderReducer,
    collect_second_order,
)

TOL = 1e-5
LAYER = 1


@pytest.fixture(scope="module", params=["tok", "avg"])
def model64(request):
    extra = {} if request.param == "tok" else {"pool_type": "avg", "final_ln_after_pool": True}
    hooked = HookedViT.from_open_clip(tiny_clip(seed=2, layers=4, **extra)).double()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return hooked, x


def brute_force(model: HookedViT, x: torch.Tensor, layer: int, write) -> torch.Tensor:
    """Σ_{j>l} change of the folded pooled output when ``write(cache)`` [B, T, d] is added to ln_1's input of
    block j alone: ln_1 statistics and attention patterns frozen at the clean forward, the changed attention
    output read at the pooled position only (nothing downstream sees it), final LN statistics frozen."""
    _, cache = model.run_with_cache(x)
    delta = write(cache)
    pooled = cache["hook_pooled"]
    sigma_f = ((pooled - pooled.mean(-1, keepdim=True)).pow(2).mean(-1, keepdim=True) + model.ln_final.eps).sqrt()
    total = 0
    for j in range(layer + 1, model.cfg.n_layers):
        resid = cache[f"blocks.{j}.hook_resid_pre"]
        mu, sigma = resid.mean(-1, keepdim=True), cache[f"blocks.{j}.ln1.hook_scale"].double()
        pooled_out = []
        for add in (torch.zeros_like(delta), delta):
            hooks = [
                (f"blocks.{j}.ln1.hook_normalized",
                 lambda t, hook, add=add, resid=resid, mu=mu, sigma=sigma: (resid + add - mu) / sigma),
                (f"blocks.{j}.attn.hook_pattern", lambda t, hook, j=j: cache[f"blocks.{j}.attn.hook_pattern"]),
                (f"blocks.{j}.hook_attn_out", lambda t, hook, j=j, pooled_out=pooled_out: pooled_out.append(model.pool_tokens(t))
                 or cache[f"blocks.{j}.hook_attn_out"]),
            ]
            with torch.no_grad():
                model.run_with_hooks(x, fwd_hooks=hooks)
        change = pooled_out[1] - pooled_out[0]
        total = total + (model.ln_final.w * change / sigma_f) @ model.W_proj
    return total


def test_neuron_effect_equals_brute_force(model64):
    model, x = model64
    stats = collect_second_order(model, x, LAYER)
    assert stats.s.dtype == torch.float64
    effects = NeuronEffects(model, stats, normalized=False).effects(torch.arange(len(x)))
    W_out = model.blocks[LAYER].mlp.W_out
    for n in (0, 7, 100):
        expected = brute_force(model, x, LAYER, lambda c, n=n: c[f"blocks.{LAYER}.mlp.hook_post"][..., n, None] * W_out[n])
        assert expected.abs().max() > 1e-4  # the path is not trivially zero
        assert rel_err(effects[:, n], expected) <= TOL


def test_neurons_plus_bias_share_sum_to_layer(model64):
    model, x = model64
    stats = collect_second_order(model, x, LAYER)
    fx = NeuronEffects(model, stats, normalized=False)
    rows = torch.arange(len(x))
    whole = brute_force(model, x, LAYER, lambda c: c[f"blocks.{LAYER}.hook_mlp_out"])
    assert rel_err(fx.effects(rows).sum(1) + fx.bias_effect(rows), whole) <= TOL
    assert rel_err(fx.layer_effect(rows), whole) <= TOL
    # the bias share is a real part of the whole (perturbed b_out), not zero
    assert fx.bias_effect(rows).abs().max() > 1e-3 * whole.abs().max()


def official_formula(model: HookedViT, x: torch.Tensor, layer: int, n: int) -> torch.Tensor:
    """The official code's per-neuron formula, evaluated literally (every mean/bias share, b_out/N)."""
    _, cache = model.run_with_cache(x)
    cfg = model.cfg
    L, H, N = cfg.n_layers, cfg.n_heads, cfg.d_mlp
    K_L = 2 * L + 1
    a = cache[f"blocks.{layer}.mlp.hook_post"][..., n]  # [B, T]
    w, b_out = model.blocks[layer].mlp.W_out[n], model.blocks[layer].mlp.b_out
    pooled = cache["hook_pooled"]
    mu_f = pooled.mean(-1, keepdim=True)
    sigma_f = ((pooled - mu_f).pow(2).mean(-1, keepdim=True) + model.ln_final.eps).sqrt()
    total = 0
    for j in range(layer + 1, L):
        K_j = 2 * j + 1
        blk = model.blocks[j]
        resid = cache[f"blocks.{j}.hook_resid_pre"]
        mu, sigma = resid.mean(-1, keepdim=True), cache[f"blocks.{j}.ln1.hook_scale"].double()
        A = cache[f"blocks.{j}.attn.hook_pattern"].double()
        A = A[:, :, 1:].mean(2) if cfg.pool_type == "avg" else A[:, :, 0]  # [B, H, T]
        x_n = blk.ln1.w * (a[..., None] * w + b_out / N - mu / (K_j * N)) / sigma + blk.ln1.b / (K_j * N)
        for h in range(H):
            v = x_n @ blk.attn.W_V[h] + blk.attn.b_V[h] / (K_j * N)
            o = torch.einsum("bt,bte->be", A[:, h], v) @ blk.attn.W_O[h] + blk.attn.b_O / (K_j * H * N)
            c = K_L * K_j * H * N
            total = total + (model.ln_final.w * (o - mu_f / c) / sigma_f + model.ln_final.b / c) @ model.W_proj
    return total


def test_shares_option_is_the_official_formula(model64):
    model, x = model64
    stats = collect_second_order(model, x, LAYER, shares=True)
    fx = NeuronEffects(model, stats, normalized=False, shares=True)
    effects = fx.effects(torch.arange(len(x)))
    for n in (3, 50):
        assert rel_err(effects[:, n], official_formula(model, x, LAYER, n)) <= TOL
    # the shares are one vector for every neuron: centred effects do not depend on the convention
    pure = NeuronEffects(model, stats, normalized=False).effects(torch.arange(len(x)))
    diff = effects - pure
    assert rel_err(diff[:, 0], diff[:, 1]) <= TOL and diff.abs().max() > 0


def test_projection_and_normalisation(model64):
    model, x = model64
    stats = collect_second_order(model, x, LAYER)
    fx = NeuronEffects(model, stats)  # 100 e/‖e‖ space
    rows = torch.arange(len(x))
    directions = torch.randn(model.cfg.output_dim, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert rel_err(fx.project(directions), fx.effects(rows) @ directions) <= TOL
    raw = NeuronEffects(model, stats, normalized=False).effects(rows)
    assert rel_err(fx.effects(rows), raw * 100 / stats.norm[:, None, None]) <= TOL
    assert rel_err(fx.embedding().norm(dim=-1), torch.full((len(x),), 100.0, dtype=torch.float64)) <= TOL


class _Items(torch.utils.data.Dataset):
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "index": i, "label": i % 2}


def test_reducer_streams_resumes_and_merges(model64, tmp_path):
    model, x = model64
    direct = collect_second_order(model, x, LAYER)
    reducer = SecondOrderReducer(model, LAYER)
    run_reducers(model, _Items(x), [reducer], batch_size=2, extra_hooks=reducer.hooks(), progress=False,
                 checkpoint_dir=tmp_path / "ckpt", checkpoint_every=1)
    streamed = reducer.result()
    for k in ("s", "s_bias", "inv_scale", "norm", "embedding"):
        assert rel_err(getattr(streamed, k), getattr(direct, k)) <= TOL, k
    assert streamed.labels.tolist() == [0, 1, 0]
    # resume: a new reducer loads the finished checkpoint without recomputing
    again = SecondOrderReducer(model, LAYER)
    run_reducers(model, _Items(x), [again], batch_size=2, extra_hooks=again.hooks(), progress=False,
                 checkpoint_dir=tmp_path / "ckpt")
    assert torch.equal(again.result().s, streamed.s)
    # merge two parts processed separately (as two processes would)
    first, second = SecondOrderReducer(model, LAYER), SecondOrderReducer(model, LAYER)
    for part, rows in ((first, [2]), (second, [0, 1])):
        run_reducers(model, torch.utils.data.Subset(_Items(x), rows), [part], batch_size=2,
                     extra_hooks=part.hooks(), progress=False)
    first.merge(second)
    merged = first.result()
    assert merged.indices.tolist() == [0, 1, 2]
    assert rel_err(merged.s, direct.s) <= TOL
    assert direct.bytes_per_image() >= direct.s[0].numel() * direct.s.element_size()


def test_rejects_bad_layers(model64):
    model, x = model64
    with pytest.raises(ValueError, match="last layer"):
        collect_second_order(model, x, model.cfg.n_layers - 1)
    with pytest.raises(ValueError, match="out of range"):
        collect_second_order(model, x, 99)


# ------------------------------------------------------------------------ through an attentional pooler
def _pooled_towers():
    import warnings

    import open_clip
    import timm
    from conftest import perturb_

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        siglip = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, embed_dim=64, depth=3,
                                   num_heads=4, img_size=32, patch_size=8, num_classes=0)
        coca = open_clip.CoCa(
            embed_dim=48,
            vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=3, head_width=16, attentional_pool=True,
                            attn_pooler_heads=4, output_tokens=True),
            text_cfg=dict(context_length=16, vocab_size=100, width=32, heads=2, layers=1),
            multimodal_cfg=dict(context_length=16, vocab_size=100, width=32, heads=2, layers=1))
        pe_core = timm.create_model("vit_pe_core_base_patch16_224", pretrained=False, embed_dim=64, depth=3,
                                    num_heads=4, img_size=32, patch_size=8, attn_pool_num_heads=2, num_classes=48)
    with torch.no_grad():  # sharpen timm's near-uniform attention so the rotary pattern matters
        for block in pe_core.blocks:
            (block.attn.qkv.weight if block.attn.qkv is not None else block.attn.q_proj.weight).mul_(8)
    return {"siglip": lambda: HookedViT.from_timm(perturb_(siglip.eval(), seed=3)),
            "coca": lambda: HookedViT.from_open_clip(perturb_(coca.eval(), seed=4)),
            "pe_core": lambda: HookedViT.from_timm(perturb_(pe_core.eval(), seed=5))}


def _eva02(**kw) -> HookedViT:
    import warnings

    import timm
    from conftest import perturb_

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eva = timm.create_model("eva02_base_patch16_clip_224", pretrained=False, embed_dim=64, depth=4, num_heads=4,
                                img_size=32, patch_size=8, **kw)
    with torch.no_grad():
        for block in eva.blocks:
            block.attn.q_proj.weight.mul_(8)
    return HookedViT.from_timm(perturb_(eva.eval(), seed=7)).double()


def brute_force_eva02(model: HookedViT, x: torch.Tensor, layer: int, write) -> torch.Tensor:
    """``brute_force`` with EVA02's sub-LayerNorm on the heads frozen too: its normalised output is recomputed
    from the changed z with the clean μ_z, σ_z. The write is scaled by 1e4 (everything is linear once frozen)."""
    _, cache = model.run_with_cache(x)
    delta = write(cache) * 1e4
    pooled = cache["hook_pooled"]
    sigma_f = ((pooled - pooled.mean(-1, keepdim=True)).pow(2).mean(-1, keepdim=True) + model.ln_final.eps).sqrt()
    total = 0
    for j in range(layer + 1, model.cfg.n_layers):
        resid = cache[f"blocks.{j}.hook_resid_pre"]
        mu, sigma = resid.mean(-1, keepdim=True), cache[f"blocks.{j}.ln1.hook_scale"]
        z_clean = cache[f"blocks.{j}.attn.hook_z"].flatten(-2)
        mu_z, sigma_z = z_clean.mean(-1, keepdim=True), cache[f"blocks.{j}.attn.ln_z.hook_scale"]
        outs, z_now = [], {}

        def frozen_ln(t, hook, add=None, resid=resid, mu=mu, sigma=sigma):
            return (resid + add - mu) / sigma

        def keep_z(t, hook, z_now=z_now):
            z_now["z"] = t.flatten(-2)

        def frozen_z_norm(t, hook, z_now=z_now, mu_z=mu_z, sigma_z=sigma_z):
            return (z_now["z"] - mu_z) / sigma_z

        def keep_out(t, hook, j=j, outs=outs):
            outs.append(model.pool_tokens(t))
            return cache[f"blocks.{j}.hook_attn_out"]

        for add in (torch.zeros_like(delta), delta):
            hooks = [(f"blocks.{j}.ln1.hook_normalized", lambda t, hook, add=add: frozen_ln(t, hook, add)),
                     (f"blocks.{j}.attn.hook_pattern", lambda t, hook, j=j: cache[f"blocks.{j}.attn.hook_pattern"]),
                     (f"blocks.{j}.attn.hook_z", keep_z),
                     (f"blocks.{j}.attn.ln_z.hook_normalized", frozen_z_norm),
                     (f"blocks.{j}.hook_attn_out", keep_out)]
            with torch.no_grad():
                model.run_with_hooks(x, fwd_hooks=hooks)
        total = total + (model.ln_final.w * (outs[1] - outs[0]) / sigma_f) @ model.W_proj / 1e4
    return total


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_eva02_neuron_effects_equal_brute_force(pool):
    """EVA02: SwiGLU neurons read after the MLP's hidden LayerNorm, later heads through their sub-LayerNorm."""
    model = _eva02(global_pool=pool, num_classes=48)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    stats = collect_second_order(model, x, LAYER)
    fx = NeuronEffects(model, stats, normalized=False)
    rows = torch.arange(len(x))
    mlp = model.blocks[LAYER].mlp
    for n in (0, 11):
        def write(c, n=n):
            a = c[f"blocks.{LAYER}.mlp.ln.hook_normalized"][..., n, None] * mlp.ln.w[n] + mlp.ln.b[n]
            return a * mlp.W_out[n]

        expected = brute_force_eva02(model, x, LAYER, write)
        assert expected.abs().max() > 1e-12
        assert rel_err(fx.effects(rows)[:, n], expected) < 1e-10
    whole = brute_force_eva02(model, x, LAYER, lambda c: c[f"blocks.{LAYER}.hook_mlp_out"])
    assert rel_err(fx.layer_effect(rows), whole) < 1e-10
    with pytest.raises(ValueError, match="shares=False"):
        collect_second_order(model, x, LAYER, shares=True)


@pytest.fixture(scope="module", params=["siglip", "coca", "pe_core"])
def pooled64(request):
    hooked = _pooled_towers()[request.param]().double()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    return hooked, x


def brute_force_pooled(model: HookedViT, x: torch.Tensor, layer: int, write) -> list[torch.Tensor]:
    """Per later layer j (then the direct path): ``write`` added to ln_1's input of block j alone (statistics and
    patterns frozen), the changed attention output at EVERY token passed to the pooler alone (``conftest.through_pooler``).
    Every step is linear once statistics and patterns are frozen, so the write is scaled up by 1e4 (and the
    effects down) to keep the difference of two forwards clear of cancellation."""
    _, cache = model.run_with_cache(x)
    delta = write(cache) * 1e4
    effects = []
    for j in range(layer + 1, model.cfg.n_layers):
        resid = cache[f"blocks.{j}.hook_resid_pre"]
        mu, sigma = resid.mean(-1, keepdim=True), cache[f"blocks.{j}.ln1.hook_scale"]
        outs = []
        for add in (torch.zeros_like(delta), delta):
            def frozen_ln(t, hook, add=add, resid=resid, mu=mu, sigma=sigma):
                return (resid + add - mu) / sigma

            def keep_out(t, hook, j=j, outs=outs):
                outs.append(t)
                return cache[f"blocks.{j}.hook_attn_out"]  # nothing downstream sees the change

            hooks = [(f"blocks.{j}.ln1.hook_normalized", frozen_ln),
                     (f"blocks.{j}.attn.hook_pattern", lambda t, hook, j=j: cache[f"blocks.{j}.attn.hook_pattern"]),
                     (f"blocks.{j}.hook_attn_out", keep_out)]
            with torch.no_grad():
                model.run_with_hooks(x, fwd_hooks=hooks)
        effects.append(through_pooler(model, x, cache, outs[1] - outs[0]) / 1e4)
    effects.append(through_pooler(model, x, cache, delta) / 1e4)
    return effects


@pytest.mark.parametrize("layer", [1, 2])
def test_neuron_effect_through_the_pooler_equals_brute_force_per_later_layer(pooled64, layer):
    model, x = pooled64
    stats = collect_second_order(model, x, layer)
    assert stats.later == list(range(layer + 1, model.cfg.n_layers)) + [model.cfg.n_layers]
    fx = NeuronEffects(model, stats, normalized=False)
    rows = torch.arange(len(x))
    W_out = model.blocks[layer].mlp.W_out
    _, cache = model.run_with_cache(x, names_filter=f"blocks.{layer}.mlp.hook_post")
    strongest = (cache[f"blocks.{layer}.mlp.hook_post"].abs().mean((0, 1)) * W_out.norm(dim=-1)).topk(2).indices
    for n in strongest.tolist():  # the neurons whose writes are largest (random towers leave many near zero)
        def write(c, n=n):
            return c[f"blocks.{layer}.mlp.hook_post"][..., n, None] * W_out[n]

        per_layer = brute_force_pooled(model, x, layer, write)
        for i, expected in enumerate(per_layer):  # each later layer's share, then the pooler's direct read
            assert expected.abs().max() > 1e-12  # not trivially zero (timm's small init keeps PE-Core's ~1e-9)
            got = torch.einsum("bh,hd->bd", stats.s[:, i, :, n], fx.U[i, :, n]) * stats.inv_scale[:, None]
            assert rel_err(got, expected) < 1e-10
        assert rel_err(fx.effects(rows)[:, n], sum(per_layer)) < 1e-10
    whole = sum(brute_force_pooled(model, x, layer, lambda c: c[f"blocks.{layer}.hook_mlp_out"]))
    assert rel_err(fx.layer_effect(rows), whole) < 1e-10


@pytest.mark.parametrize("shares", [False, True])
@pytest.mark.parametrize("normalized", [False, True])
def test_mean_from_the_statistics_equals_the_mean_of_the_effects(model64, shares, normalized):
    """φ̄_n computed from mean_I scale(I) s(I) without forming effects equals the average of the formed effects,
    in chunks smaller than the set (so the streaming sum is exercised)."""
    model, x = model64
    stats = collect_second_order(model, x, LAYER, shares=shares)
    fx = NeuronEffects(model, stats, normalized=normalized, shares=shares)
    assert rel_err(fx.mean(batch_size=3), fx.effects(torch.arange(len(x))).mean(0)) <= TOL
