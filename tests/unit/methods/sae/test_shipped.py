"""methods/sae/shipped.py: the SAE shipped with the embedded model loads offline, reads the documented hook, keeps
k features per token, and its recorded figures are consistent with it."""

import torch

from vit_lens_clip.methods.sae.shipped import SHIPPED_SAE_HOOK, load_shipped_sae, shipped_figures


def test_shipped_sae_loads_and_is_a_topk_sae():
    sae = load_shipped_sae()
    assert sae.cfg.hook_name == SHIPPED_SAE_HOOK == "blocks.4.hook_resid_post"
    assert sae.cfg.architecture == "topk" and sae.W_dec.shape == (sae.cfg.d_sae, sae.cfg.d_in)
    x = torch.randn(5, sae.cfg.d_in, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        f = sae.encode(x)
    assert ((f > 0).sum(-1) <= sae.cfg.k).all() and (f >= 0).all()


def test_shipped_figures_are_consistent():
    figures = shipped_figures()
    sae = load_shipped_sae()
    assert 0 < figures["explained_variance"] <= 1
    assert 0 < figures["l0"] <= sae.cfg.k  # a TopK SAE fires at most k features per token
    assert abs(figures["dead_fraction"] - figures["dead_features"] / sae.cfg.d_sae) < 1e-9
    for task in figures["zero_shot"].values():
        assert 0 <= task["plain"] <= 1 and 0 <= task["sae"] <= 1 and task["n"] > 0
