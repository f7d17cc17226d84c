"""methods/ablation.py: post-hoc mean-ablation swaps exactly the listed parts for their means; the forward hooks
replace activations by their means during the pass (tiny model)."""

import pytest
import torch
from conftest import rel_err, tiny_clip

from vit_lens_clip.decompose.parts import decompose
from vit_lens_clip.errors import BadInputError
from vit_lens_clip.methods.ablation import ablate_posthoc, cumulative_layer_curve, mean_ablation_hooks
from vit_lens_clip.model.hooked_vit import HookedViT


@pytest.fixture(scope="module")
def setup():
    hooked = HookedViT.from_open_clip(tiny_clip(seed=8))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    parts = decompose(hooked, x, layers=[1, 2])
    means = {"embed": parts.embed.mean(0), "attns": parts.attns.mean(0), "mlps": parts.mlps.mean(0),
             "heads": parts.heads.mean(0)}
    return hooked, x, parts, means


def test_posthoc_swaps_the_listed_parts(setup):
    _, _, parts, means = setup
    y = parts.total()
    assert torch.allclose(ablate_posthoc(parts, means), y)
    got = ablate_posthoc(parts, means, attn_layers=[0, -3], mlp_layers=[2], heads=[(2, 1)], embed=True)
    expected = (y - parts.attns[:, 0] + means["attns"][0] - parts.mlps[:, 2] + means["mlps"][2]
                - parts.heads[:, 1, 1] + means["heads"][1, 1] - parts.embed + means["embed"])
    assert torch.allclose(got, expected, atol=1e-5)  # layer 0 listed twice (0 and −3) is ablated once
    with pytest.raises(BadInputError, match="ablated as a whole"):
        ablate_posthoc(parts, means, attn_layers=[2], heads=[(2, 0)])
    with pytest.raises(ValueError, match="means from other layers"):
        ablate_posthoc(parts, {**means, "attns": means["attns"][:2]}, attn_layers=[0])


def test_hooks_replace_activations_by_their_means(setup):
    hooked, x, _, _ = setup
    _, cache = hooked.run_with_cache(x)
    names = ["blocks.1.hook_mlp_out", "blocks.2.attn.hook_result"]
    act_means = {n: cache[n].mean(0) for n in names}
    seen = {}
    keep = [(n, lambda t, hook: seen.__setitem__(hook.name, t.clone())) for n in names]
    with torch.no_grad():
        hooked.run_with_hooks(x, fwd_hooks=mean_ablation_hooks(act_means, mlp_layers=[1]) + keep)
    assert torch.allclose(seen["blocks.1.hook_mlp_out"], act_means["blocks.1.hook_mlp_out"].expand(4, -1, -1))
    with torch.no_grad():
        hooked.run_with_hooks(x, fwd_hooks=mean_ablation_hooks(act_means, heads=[(2, 3)]) + keep)
    result = seen["blocks.2.attn.hook_result"]  # only head 3 is replaced; the other heads are the clean ones
    assert torch.allclose(result[:, :, 3], act_means["blocks.2.attn.hook_result"][:, 3].expand(4, -1, -1))
    assert torch.allclose(result[:, :, :3], cache["blocks.2.attn.hook_result"][:, :, :3], atol=1e-5)
    with pytest.raises(KeyError, match="ActivationMeanReducer"):
        mean_ablation_hooks({}, attn_layers=[0])


def test_cumulative_curve_starts_at_the_plain_accuracy(setup):
    _, _, parts, means = setup
    classifier = torch.nn.functional.normalize(torch.randn(48, 3, generator=torch.Generator().manual_seed(2)), dim=0)
    labels = (parts.total() @ classifier).argmax(-1)  # the unablated model is right on every image
    curve = cumulative_layer_curve(parts, means, classifier, labels)
    assert [k for k, _ in curve] == [0, 1, 2, 3] and curve[0][1] == 1.0
    assert all(0 <= acc <= 1 for _, acc in curve)
    # all layers ablated: the embedding no longer depends on the attention of any image beyond the means
    full = ablate_posthoc(parts, means, attn_layers=[0, 1, 2])
    assert abs(curve[-1][1] - float(((full @ classifier).argmax(-1) == labels).float().mean())) < 1e-6
    assert rel_err(full - parts.total(), (means["attns"] - parts.attns).sum(1)) <= 1e-5
