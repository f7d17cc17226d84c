"""methods/sae/train.py: activations are collected at the hook, a TopK SAE trained on low-rank data reconstructs it,
and the reconstruction figures measure what they name."""

import torch
from conftest import tiny_clip

from vit_lens_clip.methods.sae.train import collect_activations, reconstruction_figures, train_topk_sae
from vit_lens_clip.model.hooked_vit import HookedViT


def test_collect_activations_is_the_hooks_activation():
    hooked = HookedViT.from_open_clip(tiny_clip(seed=10))
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    acts = collect_activations(hooked, x, "blocks.1.hook_resid_post", batch_size=2, progress=False)
    _, cache = hooked.run_with_cache(x)
    assert acts.shape == (5, 17, 64)
    assert torch.allclose(acts, cache["blocks.1.hook_resid_post"], atol=1e-6)


def test_topk_sae_learns_low_rank_data():
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(4, 16, generator=g)
    codes = torch.randn(512, 4, generator=g).relu()  # sparse non-negative mixtures of 4 directions
    acts = codes @ basis + 0.5
    sae, losses = train_topk_sae(acts, "h", d_sae=16, k=4, steps=100, batch_size=128, lr=3e-3, progress=False)
    assert len(losses) == 100 and sum(losses[-10:]) < 0.5 * sum(losses[:10])
    figures = reconstruction_figures(sae, acts, batch_size=300)
    assert figures["explained_variance"] > 0.8 and 0 < figures["l0"] <= 4 and figures["n_tokens"] == 512
    # the figures are what they say: explained variance from the SAE's own reconstructions
    with torch.no_grad():
        recon = sae.decode(sae.encode(acts))
    ev = 1 - float((recon - acts).pow(2).sum()) / float((acts - acts.mean(0)).pow(2).sum())
    assert abs(figures["explained_variance"] - ev) < 1e-4
    assert figures["dead_features"] == int((~(sae.encode(acts) > 0).any(0)).sum())
