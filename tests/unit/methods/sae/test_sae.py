"""SAEs on HookedViT: splicing (error term, reconstruction path, hooks, removal), the SAELens and peer formats,
a live sae_lens.SAE where installed, exact per-head sources of encoder pre-activations, direct effects."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import rel_err, tiny_clip
from safetensors.torch import save_file

from vit_lens_clip.decompose.fold import LNFold
from vit_lens_clip.methods.sae import explain
from vit_lens_clip.methods.sae.formats import (
    SAEFormatError,
    from_sae_lens,
    load_peer,
    load_sae,
    load_sae_lens,
    save_sae_lens,
)
from vit_lens_clip.methods.sae.sae import SAEConfig, SparseAutoencoder
from vit_lens_clip.methods.sae.splice import (
    attach_sae,
    attached_saes,
    check_compatible,
    detach_sae,
    sae_hook_name,
    saes_spliced,
)
from vit_lens_clip.model.hooked_vit import HookedViT

D, D_SAE = 64, 96
VARIANTS = [("relu", "none"), ("topk", "expected_average_only_in"), ("jumprelu", "layer_norm"),
            ("topk", "constant_norm_rescale")]


@pytest.fixture(scope="module")
def model() -> HookedViT:
    return HookedViT.from_open_clip(tiny_clip(seed=3)).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def random_sae(hook: str = "blocks.1.hook_resid_post", architecture: str = "relu", normalize: str = "none",
               seed: int = 0, **kw) -> SparseAutoencoder:
    cfg = SAEConfig(d_in=D, d_sae=D_SAE, hook_name=hook, architecture=architecture, normalize=normalize,
                    k=8 if architecture == "topk" else None,
                    scaling_factor=0.7 if normalize == "expected_average_only_in" else None, **kw)
    sae = SparseAutoencoder(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if p.ndim == 2 else 0.05))
        if architecture == "jumprelu":
            sae.threshold.copy_(torch.rand(D_SAE, generator=g) * 0.05)
    return sae


def manual_reconstruction(sae: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """The SAE written out independently of the module, for each normalisation and activation."""
    c, W_enc, W_dec, b_enc, b_dec = sae.cfg, sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec
    if c.normalize == "layer_norm":
        mu, std = x.mean(-1, keepdim=True), x.std(-1, keepdim=True)
        xn, undo = (x - mu) / (std + 1e-5), lambda r: r * std + mu
    elif c.normalize == "constant_norm_rescale":
        s = D**0.5 / x.norm(dim=-1, keepdim=True)
        xn, undo = x * s, lambda r: r / s
    elif c.normalize == "expected_average_only_in":
        xn, undo = x * c.scaling_factor, lambda r: r / c.scaling_factor
    else:
        xn, undo = x, lambda r: r
    pre = (xn - b_dec) @ W_enc + b_enc
    if c.architecture == "topk":
        kth = pre.topk(c.k, dim=-1).values[..., -1:]
        f = torch.where(pre >= kth, pre.relu(), torch.zeros_like(pre))
    elif c.architecture == "jumprelu":
        f = torch.where(pre > sae.threshold, pre, torch.zeros_like(pre)).relu()
    else:
        f = pre.relu()
    return undo(f @ W_dec + b_dec)


@pytest.mark.parametrize("architecture,normalize", VARIANTS)
def test_error_term_leaves_embedding_unchanged(model, x, architecture, normalize):
    y0 = model(x)
    sae = random_sae(architecture=architecture, normalize=normalize)
    with saes_spliced(model, sae, use_error_term=True):
        y1 = model(x)
        _, cache = model.run_with_cache(x)
    assert rel_err(y1, y0) <= 1e-5
    recons, error = cache[sae_hook_name(sae, "hook_sae_recons")], cache[sae_hook_name(sae, "hook_sae_error")]
    assert rel_err(recons + error, cache[sae_hook_name(sae, "hook_sae_input")]) <= 1e-5
    assert float((recons - cache[sae_hook_name(sae, "hook_sae_input")]).abs().max()) > 1e-3  # a real SAE, not identity


@pytest.mark.parametrize("architecture,normalize", VARIANTS)
def test_without_error_term_output_is_the_reconstruction_path(model, x, architecture, normalize):
    sae = random_sae(architecture=architecture, normalize=normalize, seed=1)
    hook = sae.cfg.hook_name
    with torch.no_grad():
        expected = model.run_with_hooks(x, fwd_hooks=[(hook, lambda a, hook: manual_reconstruction(sae, a))])
        with saes_spliced(model, sae, use_error_term=False):
            got, cache = model.run_with_cache(x)
    assert rel_err(got, expected) <= 1e-5
    assert rel_err(got, model(x)) > 1e-3
    acts = cache[sae_hook_name(sae)]
    assert acts.shape == (3, 17, D_SAE) and bool((acts >= 0).all())
    if architecture == "topk":
        assert bool(((acts > 0).sum(-1) <= 8).all())


def test_hooks_cache_ablate_steer_and_remove(model, x):
    y0 = model(x)
    sae = random_sae(architecture="topk", normalize="expected_average_only_in")
    hook = sae.cfg.hook_name
    attach_sae(model, sae, use_error_term=True)
    try:
        names = [n for n in model.hook_dict if n.startswith(hook + ".sae.")]
        assert sorted(n.rsplit(".", 1)[1] for n in names) == sorted(
            ["hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_error", "hook_sae_output"])
        assert attached_saes(model) == {hook: sae}
        _, cache = model.run_with_cache(x, names_filter=lambda n: n == sae_hook_name(sae))
        j = int(cache[sae_hook_name(sae)][:, 0].sum(0).argmax())

        def ablate(a, hook):
            a[..., j] = 0
            return a

        def steer(a, hook):
            a[..., j] += 5.0
            return a

        seen = {}
        y_ablate = model.run_with_hooks(x, fwd_hooks=[(sae_hook_name(sae), ablate),
                                                      (hook, lambda a, hook: seen.setdefault("x", a.clone()))])
        y_steer = model.run_with_hooks(x, fwd_hooks=[(sae_hook_name(sae), steer)])
        assert rel_err(y_ablate, y0) > 1e-4 and rel_err(y_steer, y0) > 1e-4
        # the ablation removes exactly a_j · W_dec[j] / s from the activation
        a_j = cache[sae_hook_name(sae)][..., j:j + 1]
        _, clean = model.run_with_cache(x, names_filter=lambda n: n == hook)
        assert rel_err(clean[hook] - seen["x"], a_j * sae.W_dec[j] / 0.7) <= 1e-5
        with pytest.raises(ValueError, match="already attached"):
            attach_sae(model, sae)
    finally:
        detach_sae(model, hook)
    assert not any(".sae." in n for n in model.hook_dict) and attached_saes(model) == {}
    assert all(not p.fwd_hooks for p in model.hook_dict.values())
    assert rel_err(model(x), y0) == 0.0
    with pytest.raises(ValueError, match="no SAE is attached"):
        detach_sae(model, hook)


def test_positions_cls_only_leaves_patches_alone(model, x):
    sae = random_sae(positions="cls")
    with torch.no_grad(), saes_spliced(model, sae):
        _, cache = model.run_with_cache(x, names_filter=lambda n: n.startswith("blocks.1.hook_resid_post"))
    assert cache[sae_hook_name(sae)].shape == (3, 1, D_SAE)
    _, plain = model.run_with_cache(x, names_filter=lambda n: n == "blocks.1.hook_resid_post")
    out = cache["blocks.1.hook_resid_post"]
    assert torch.equal(out[:, 1:], plain["blocks.1.hook_resid_post"][:, 1:])
    assert rel_err(out[:, :1], manual_reconstruction(sae, plain["blocks.1.hook_resid_post"][:, :1])) <= 1e-5


def test_clear_errors_for_mismatches(model):
    with pytest.raises(ValueError, match="no hook 'blocks.1.hook_resid_pots'.*did you mean"):
        check_compatible(model, random_sae(hook="blocks.1.hook_resid_pots"))
    wide = SparseAutoencoder(SAEConfig(d_in=D + 1, d_sae=8, hook_name="blocks.0.hook_resid_post"))
    with pytest.raises(ValueError, match="width d_in=65 but 'blocks.0.hook_resid_post' has width 64"):
        attach_sae(model, wide)
    with pytest.raises(ValueError, match="read-only"):
        check_compatible(model, random_sae(hook="hook_pooled"))
    with pytest.raises(ValueError, match="TopK"):
        SAEConfig(d_in=4, d_sae=8, hook_name="h", architecture="topk")


# ------------------------------------------------------------------------------------------ on-disk formats


def _weights(sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
    names = ["W_enc", "W_dec", "b_enc", "b_dec"] + (["threshold"] if sae.cfg.architecture == "jumprelu" else [])
    return {n: getattr(sae, n).detach().clone().contiguous() for n in names}


def test_sae_lens_folder_6x_and_5x_layouts_load_and_run(model, x, tmp_path):
    ref = random_sae(architecture="jumprelu", normalize="none", seed=4)
    (tmp_path / "v6").mkdir()
    save_file(_weights(ref), str(tmp_path / "v6" / "sae_weights.safetensors"))
    (tmp_path / "v6" / "cfg.json").write_text(json.dumps({
        "architecture": "jumprelu", "d_in": D, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {"hook_name": "blocks.1.hook_resid_post", "model_name": "tiny", "hook_head_index": None}}))
    topk = random_sae(architecture="topk", seed=5)
    (tmp_path / "v5").mkdir()
    save_file(_weights(topk), str(tmp_path / "v5" / "sae_weights.safetensors"))
    (tmp_path / "v5" / "cfg.json").write_text(json.dumps({
        "architecture": "standard", "d_in": D, "d_sae": D_SAE, "dtype": "torch.float32",
        "hook_name": "blocks.1.hook_resid_post", "hook_layer": 1, "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 8}, "apply_b_dec_to_input": True, "normalize_activations": None}))
    for folder, original in (("v6", ref), ("v5", topk)):
        sae = load_sae(tmp_path / folder)
        assert sae.cfg.source == "sae_lens" and sae.cfg.architecture == original.cfg.architecture
        with torch.no_grad():
            expected = model.run_with_hooks(
                x, fwd_hooks=[(original.cfg.hook_name, lambda a, hook, original=original: manual_reconstruction(original, a))])
            with saes_spliced(model, sae):
                assert rel_err(model(x), expected) <= 1e-5
    # round trip through our writer
    save_sae_lens(topk, tmp_path / "ours")
    again = load_sae_lens(tmp_path / "ours")
    assert all(torch.equal(getattr(again, n), getattr(topk, n)) for n in ("W_enc", "W_dec", "b_enc", "b_dec"))
    assert again.cfg.k == 8 and again.cfg.hook_name == topk.cfg.hook_name


def test_peer_format_loads_and_runs(model, x, tmp_path):
    ref = random_sae(normalize="layer_norm", seed=6)
    save_file(_weights(ref), str(tmp_path / "weights.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "model_class_name": "HookedViT", "hook_point_layer": 1, "layer_subtype": "hook_resid_post", "d_in": D,
        "expansion_factor": D_SAE // D * 1, "d_sae": D_SAE, "activation_fn_str": "relu", "activation_fn_kwargs": {},
        "normalize_activations": "layer_norm", "cls_token_only": False, "hook_point_head_index": None,
        "dtype": {"__type__": "torch.dtype", "value": "torch.float32"}, "architecture": "standard"}))
    sae = load_peer(tmp_path)
    assert sae.cfg.hook_name == "blocks.1.hook_resid_post" and sae.cfg.normalize == "layer_norm"
    assert sae.cfg.source == "vit_prisma"
    with torch.no_grad():
        expected = model.run_with_hooks(x, fwd_hooks=[("blocks.1.hook_resid_post",
                                                       lambda a, hook: manual_reconstruction(ref, a))])
        with saes_spliced(model, sae):
            assert rel_err(model(x), expected) <= 1e-5


def test_format_errors_are_clear(tmp_path):
    with pytest.raises(SAEFormatError, match="no cfg.json"):
        load_sae(tmp_path)
    ref = random_sae()
    w = _weights(ref)
    w["W_enc"] = w["W_enc"][:, :10].contiguous()
    save_file(w, str(tmp_path / "sae_weights.safetensors"))
    cfg = {"architecture": "standard", "d_in": D, "d_sae": D_SAE, "metadata": {"hook_name": "blocks.1.hook_resid_post"}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEFormatError, match=r"W_enc has shape \(64, 10\)"):
        load_sae_lens(tmp_path)
    for bad, match in (({"architecture": "gated"}, "gated"), ({"dtype": "int8"}, "dtype"),
                       ({"metadata": {"hook_name": "h", "hook_head_index": 2}}, "per-head"),
                       ({"metadata": {}}, "no hook_name")):
        (tmp_path / "cfg.json").write_text(json.dumps({**cfg, **bad}))
        with pytest.raises(SAEFormatError, match=match):
            load_sae_lens(tmp_path)


def test_live_sae_lens_object(model, x, tmp_path):
    sae_lens = pytest.importorskip(
        "sae_lens", reason="sae_lens is not installed here: it needs transformer_lens<4 (the [sae] extra; "
                           ".ci/wheel-check runs this test in that resolution)")
    ref = random_sae(architecture="topk", normalize="expected_average_only_in", seed=7)  # the scale is folded
    save_sae_lens(ref, tmp_path)
    live = sae_lens.SAE.load_from_disk(str(tmp_path), device="cpu")
    acts = torch.randn(5, D) * 3
    assert rel_err(live.encode(acts), ref.encode(acts)) <= 1e-5  # SAELens reads our folder as we do
    assert rel_err(live.decode(live.encode(acts)), ref.decode(ref.encode(acts))) <= 1e-5
    converted = from_sae_lens(live)
    with torch.no_grad(), saes_spliced(model, converted):
        y = model(x)
    expected = model.run_with_hooks(x, fwd_hooks=[(ref.cfg.hook_name, lambda a, hook: manual_reconstruction(ref, a))])
    assert rel_err(y, expected) <= 1e-5 and converted.cfg.k == 8


# ------------------------------------------------------------------------------------------ explanations


@pytest.mark.parametrize("hook", ["blocks.2.hook_resid_post", "blocks.1.hook_resid_mid", "blocks.1.hook_attn_out"])
@pytest.mark.parametrize("normalize", ["expected_average_only_in", "layer_norm", "constant_norm_rescale"])
def test_head_sources_sum_to_encoder_pre_activation(model, x, hook, normalize):
    sae = random_sae(hook=hook, normalize=normalize, seed=8)
    feats = [0, 5, 17, 95]
    src = explain.feature_sources(model, sae, x, features=feats, position=3)
    with torch.no_grad(), saes_spliced(model, sae, use_error_term=True):
        _, cache = model.run_with_cache(x, names_filter=lambda n: n == sae_hook_name(sae, "hook_sae_acts_pre"))
    hooked_pre = cache[sae_hook_name(sae, "hook_sae_acts_pre")][..., feats]
    assert rel_err(src.pre_acts, hooked_pre) <= 1e-5
    assert rel_err(src.total(), src.pre_acts) <= 1e-5  # Σ heads + embed + biases + MLPs + constant = pre
    # heads' share is not a rounding error: it carries a real part of the pre-activation
    assert float(src.heads.abs().sum()) > 0.05 * float(src.pre_acts.abs().sum())
    # each head's contribution at the chosen token splits exactly over source tokens
    assert rel_err(src.head_sources.sum(3), src.heads[:, :, :, 3]) <= 1e-5
    assert len(src.top_heads(0, weights=torch.ones(3, 17), n=3)) == 3


def test_direct_effects_fold_exactly_at_the_last_layer(model, x):
    L = model.cfg.n_layers
    sae = random_sae(hook=f"blocks.{L - 1}.hook_resid_post", normalize="expected_average_only_in", seed=9)
    feats = list(range(D_SAE))
    with torch.no_grad(), saes_spliced(model, sae, use_error_term=True):
        y, cache = model.run_with_cache(x, names_filter=lambda n: n in (sae_hook_name(sae), "hook_pooled"))
    pooled_acts = cache[sae_hook_name(sae)][:, 0]
    effects = explain.direct_effects(model, sae, pooled_acts, cache["hook_pooled"], feats)  # [B, F, d_out]
    rest = cache["hook_pooled"].double() - pooled_acts.double() @ explain.decoder_directions(sae)
    fold = LNFold.from_residual(cache["hook_pooled"], model.ln_final.w, model.ln_final.b, model.W_proj,
                                model.ln_final.eps, convention="own_mean")
    assert rel_err(fold.fold(rest.float(), share=1.0) + effects.sum(1), y) <= 1e-5
    assert float(effects.abs().max()) > 1e-3
    # the σ = 1 direction is the same vector up to the per-image 1/σ and the activation
    dirs = explain.direct_effect_directions(model, sae, feats)
    j = int(pooled_acts[0].argmax())
    assert rel_err(torch.nn.functional.normalize(effects[0, j].double(), dim=0),
                   torch.nn.functional.normalize(dirs[j], dim=0)) <= 1e-5


def test_ablation_effects_maps_and_auroc(model, x):
    sae = random_sae(normalize="expected_average_only_in", seed=10)
    acts = explain.feature_activations(model, sae, x, features=[0, 1, 2])
    assert acts.shape == (3, 17, 3)
    maps = explain.activation_maps(model, acts)
    assert maps.shape == (3, 3, 4, 4) and torch.equal(maps[1, 2].flatten(), acts[1, 1:, 2])
    with torch.no_grad():
        sae.b_enc[1] = -1e6  # feature 1 never fires: no effect
    eff = explain.ablation_effects(model, sae, x, [0, 1])
    assert float(eff[1].abs().max()) == 0.0 and float(eff[0].abs().max()) > 0
    # the shared prefix changes nothing: the same as whole-model runs with and without the ablation
    name = sae_hook_name(sae)

    def zero(acts, hook):
        acts[..., 0] = 0
        return acts

    with torch.no_grad(), saes_spliced(model, sae, use_error_term=True):
        whole = model(x) - model.run_with_hooks(x, fwd_hooks=[(name, zero)])
    assert torch.equal(eff[0], whole)
    sklearn = pytest.importorskip("sklearn.metrics")
    s, y = torch.tensor([0.1, 0.4, 0.4, 0.8, 0.2, 0.4]), torch.tensor([0, 1, 0, 1, 0, 1])
    assert abs(explain.auroc(s, y) - sklearn.roc_auc_score(y.numpy(), s.numpy())) < 1e-12


def test_peer_format_plain_pt_state_dict(model, x, tmp_path):
    ref = random_sae(architecture="topk", normalize="none", seed=11)
    torch.save({"state_dict": _weights(ref)}, tmp_path / "n_images_100.pt")
    (tmp_path / "config.json").write_text(json.dumps({
        "hook_point": "blocks.1.hook_resid_post", "d_in": D, "d_sae": D_SAE, "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 8}, "normalize_activations": "none", "dtype": "float32"}))
    sae = load_sae(tmp_path)
    assert sae.cfg.source == "vit_prisma" and sae.cfg.k == 8
    torch.save([1, 2], tmp_path / "n_images_100.pt")
    with pytest.raises(SAEFormatError, match="dict of tensors"):
        load_sae(tmp_path)
