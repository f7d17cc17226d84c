"""Mean-ablation on a full-size tower (ViT-B-16, random weights): intervention hooks and post-hoc ablation agree."""

from __future__ import annotations

import torch
from conftest import random_open_clip, rel_err

from vit_lens_clip import HookedViT
from vit_lens_clip.datasets.folder import TensorImages
from vit_lens_clip.decompose.parts import decompose
from vit_lens_clip.decompose.reducers import ActivationMeanReducer, MeanReducer, run_reducers
from vit_lens_clip.methods.ablation import ablate_posthoc, mean_ablation_hooks

TOL = 1e-5


def test_intervention_equals_posthoc_in_residual_space():
    """Mean-ablating a last-layer head by intervention moves the final pre-LN residual by exactly the
    difference that post-hoc ablation removes (the last MLP held at its clean output: direct effect)."""
    model = random_open_clip("ViT-B-16")
    hooked = HookedViT.from_open_clip(model)
    images = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    last, head = hooked.cfg.n_layers - 1, 3
    means, act_means = MeanReducer(), ActivationMeanReducer([f"blocks.{last}.attn.hook_result"])
    run_reducers(hooked, TensorImages(images), [means], batch_size=2, layers=[last],
                 activation_means=[act_means], progress=False)
    x = images[:2]
    clean = decompose(hooked, x, layers=[last])
    expected = ablate_posthoc(clean, means.result(), heads=[(last, head)], space="residual", model=hooked)

    _, clean_cache = hooked.run_with_cache(x, names_filter=[f"blocks.{last}.hook_mlp_out"])
    frozen_mlp = clean_cache[f"blocks.{last}.hook_mlp_out"]
    hooks = mean_ablation_hooks(act_means.result(), heads=[(last, head)])
    hooks.append((f"blocks.{last}.hook_mlp_out", lambda t, hook: frozen_mlp))
    seen = {}
    hooks.append(("hook_pooled", lambda t, hook: seen.setdefault("r", t.clone())))
    with torch.no_grad():
        intervened = hooked.run_with_hooks(x, fwd_hooks=hooks)
    delta_posthoc = means.result()["raw.heads"][0, head] - clean.raw["heads"][:, 0, head]
    assert rel_err(seen["r"] - clean.raw["pooled"], delta_posthoc) <= 1e-4
    assert rel_err(intervened, expected) <= TOL
