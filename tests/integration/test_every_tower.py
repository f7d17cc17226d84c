"""Every tool on every tower: heatmaps, joint maps, TextSpan on collected contributions, and the segmentation
benchmark with every registered map method, on tiny random towers of each family (CLS and CLIPA pooling,
CoCa, SigLIP's MAP head, PE-Core, EVA02). Text directions are random unit vectors (no tokenizer offline).
The attention-pooled baselines are checked against their definitions (methods/spatial/baselines.py)."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import perturb_, rel_err, tiny_clip
from PIL import Image
from torchvision import transforms

from vit_lens_clip import HookedViT
from vit_lens_clip.datasets.segmentation import MaskFolder
from vit_lens_clip.decompose.parts import decompose
from vit_lens_clip.methods.spatial.baselines import attention_rollout, chefer, gradcam, raw_attention
from vit_lens_clip.methods.spatial.evaluate import evaluate_segmentation
from vit_lens_clip.methods.spatial.heatmaps import joint_map, text_heatmap
from vit_lens_clip.methods.spatial.registry import MAP_METHODS
from vit_lens_clip.methods.textspan.runs import collect_head_contributions, run_textspan

SMALL = dict(embed_dim=64, depth=2, num_heads=4, img_size=32)


def _timm(name: str, sharpen: bool = False, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = timm.create_model(name, pretrained=False, **{**SMALL, **kw})
    if sharpen:  # timm's near-uniform init hides rotary mistakes; sharpen the attention
        with torch.no_grad():
            for block in model.blocks:
                (block.attn.qkv.weight if block.attn.qkv is not None else block.attn.q_proj.weight).mul_(8)
    return perturb_(model.eval(), seed=1)


def _coca() -> HookedViT:
    import open_clip

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = open_clip.CoCa(
            embed_dim=48,
            vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2, head_width=16, attentional_pool=True,
                            attn_pooler_heads=4, output_tokens=True),
            text_cfg=dict(context_length=16, vocab_size=100, width=32, heads=2, layers=1),
            multimodal_cfg=dict(context_length=16, vocab_size=100, width=32, heads=2, layers=1),
        )
    return HookedViT.from_open_clip(perturb_(model.eval(), seed=2))


TOWERS = {
    "open_clip": lambda: HookedViT.from_open_clip(tiny_clip(layers=2)),
    "clipa_avg": lambda: HookedViT.from_open_clip(tiny_clip(layers=2, pool_type="avg", final_ln_after_pool=True,
                                                             no_ln_pre=True)),
    "coca": _coca,
    "siglip": lambda: HookedViT.from_timm(_timm("vit_base_patch16_siglip_224", num_classes=0, patch_size=8)),
    "pe_core": lambda: HookedViT.from_timm(_timm("vit_pe_core_base_patch16_224", True, attn_pool_num_heads=2,
                                                 num_classes=48, patch_size=8)),
    "eva02": lambda: HookedViT.from_timm(_timm("eva02_base_patch16_clip_224", True, num_classes=48, patch_size=8)),
}


@pytest.fixture(scope="module", params=list(TOWERS))
def tower(request):
    return request.param, TOWERS[request.param]().double()


def _images(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _texts(model: HookedViT, k: int, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(k, model.cfg.output_dim, generator=g, dtype=torch.float64), dim=-1)


def test_text_heatmap_and_joint_map(tower):
    _, model = tower
    x, texts = _images(), _texts(model, 3)
    maps = text_heatmap(model, x, texts)
    parts = decompose(model, x, per_source=True)
    n_prefix = parts.head_sources.shape[3] - model.cfg.n_patches
    patches = parts.head_sources[:, :, :, n_prefix:]
    expected = torch.einsum("blhmd,kd->bkm", patches, texts).reshape(maps.shape)
    assert rel_err(maps, expected) < 1e-10
    joint = joint_map(model, x, model.cfg.n_layers - 1, 1, texts[0])
    assert rel_err(joint, torch.einsum("bmd,d->bm", patches[:, -1, 1], texts[0]).reshape(joint.shape)) < 1e-10
    assert rel_err(parts.total(), model(x)) < 1e-10


def test_textspan_on_collected_contributions(tower):
    _, model = tower
    contributions = collect_head_contributions(model, _images(6, seed=5), last_n_layers=2, batch_size=3,
                                               progress=False)
    rows = run_textspan(contributions, _texts(model, 12, seed=7).float(), k=3, rank=8)
    assert sorted(rows) == [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    for row in rows.values():
        assert row.indices.shape == (3,) and len(set(row.indices.tolist())) == 3
        assert (row.variance_explained >= 0).all() and row.variance_explained.sum() <= 1 + 1e-6


def test_every_map_method_runs(tower):
    _, model = tower
    x = _images()
    classifier = _texts(model, 4).T
    for method in MAP_METHODS.values():
        maps = method.compute(model, x, classifier, torch.tensor([0, 2]))
        assert maps.shape == (2, *model.cfg.grid_size) and torch.isfinite(maps).all(), method.name


def _pool_rows(model: HookedViT, x: torch.Tensor):
    _, cache = model.run_with_cache(x)
    pool = cache["attn_pool.attn.hook_pattern"][:, :, 0].float().mean(1)  # [B, n_src]
    if pool.shape[-1] < model.cfg.n_ctx:
        pool = torch.cat([pool.new_zeros(pool.shape[0], model.cfg.n_ctx - pool.shape[-1]), pool], -1)
    return cache, pool


@pytest.mark.parametrize("name", ["coca", "siglip", "pe_core"])
def test_attention_pooled_baselines_follow_their_definition(name):
    model = TOWERS[name]()
    x = _images().float()
    cache, pool = _pool_rows(model, x)
    grid = (2, *model.cfg.grid_size)
    n_prefix = model.cfg.n_prefix
    assert rel_err(raw_attention(model, x), pool[:, n_prefix:].reshape(grid)) < 1e-6
    rollout = None
    for l in range(model.cfg.n_layers):
        mixed = cache[f"blocks.{l}.attn.hook_pattern"].float().mean(1) + torch.eye(model.cfg.n_ctx)
        mixed = mixed / mixed.sum(-1, keepdim=True)
        rollout = mixed if rollout is None else mixed @ rollout
    expected = torch.einsum("bm,bmn->bn", pool, rollout)[:, n_prefix:].reshape(grid)
    assert rel_err(attention_rollout(model, x), expected) < 1e-6
    text = _texts(model, 1)[0].float()
    for fn in (gradcam, chefer):
        maps = fn(model, x, text)
        assert maps.shape == grid and torch.isfinite(maps).all() and maps.abs().sum() > 0


PREPROCESS = transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32), transforms.ToTensor()])


def _mask_folder(root) -> MaskFolder:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        image = (rng.random((40, 48, 3)) * 80).astype(np.uint8)
        mask = np.zeros((40, 48), dtype=np.uint8)
        mask[10:30, 8:24 + i] = 255
        image[mask > 0] = 230
        Image.fromarray(image).save(root / "images" / f"img{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"img{i}.png")
    return MaskFolder(root, PREPROCESS)


def test_evaluate_segmentation_with_every_method(tower, tmp_path):
    _, model = tower
    loaded = SimpleNamespace(model=model.float(), preprocess=PREPROCESS)
    try:
        results = evaluate_segmentation(loaded, _mask_folder(tmp_path / "data"), _texts(model, 3).T.float(),
                                        methods=tuple(MAP_METHODS), batch_size=2, progress=False)
    finally:
        model.double()
    assert set(results) == set(MAP_METHODS)
    for r in results.values():
        assert r["n_images"] == 3 and 0 <= r["miou"] <= 1 and 0 <= r["mean_ap"] <= 1


def test_neuron_lens_and_neuron_maps(tower):
    """The second-order neuron lens runs on every tower (its brute-force checks are in tests/test_neurons_effects.py),
    and the neuron segmentation map reads the patch positions of each tower (no class token, registers)."""
    from vit_lens_clip.methods.neurons.effects import NeuronEffects, collect_second_order, neuron_activation_hook
    from vit_lens_clip.methods.neurons.segmentation import neuron_maps

    _, model = tower
    x = _images()
    stats = collect_second_order(model, x, 0)
    effects = NeuronEffects(model, stats, normalized=False)
    assert effects.effects(torch.arange(2)).shape == (2, model.cfg.d_mlp, model.cfg.output_dim)
    layer_of, neuron_of = torch.tensor([[0, 1], [1, 1]]), torch.tensor([[3, 5], [2, 7]])
    maps = neuron_maps(model, x, _texts(model, 2).T, (layer_of, neuron_of), labels=torch.tensor([0, 1]))
    _, cache = model.run_with_cache(x)
    for b, c in enumerate((0, 1)):
        acts = []
        for l, n in zip(layer_of[c].tolist(), neuron_of[c].tolist()):
            name, activation = neuron_activation_hook(model, l)
            acts.append(activation(cache[name])[b, model.cfg.n_prefix:, n])
        assert rel_err(maps[b].flatten(), torch.stack(acts).mean(0)) < 1e-6


def test_so400m_config_is_claimed_and_its_tower_is_exact():
    """SO400M (open_clip ``ViT-SO400M-14-SigLIP*``): SigLIP's MAP tower with another width and MLP ratio, built by
    timm's own so400m builder (shrunk); the family is read from open_clip's config, the port equals timm."""
    from vit_lens_clip.convert.registry import check_open_clip_name

    assert check_open_clip_name("ViT-SO400M-14-SigLIP").name == "open_clip_timm"
    trunk = _timm("vit_so400m_patch14_siglip_224", num_classes=0, patch_size=8)
    assert trunk.global_pool == "map" and trunk.cls_token is None
    x = _images().float()
    with torch.no_grad():
        assert rel_err(HookedViT.from_timm(trunk)(x), trunk(x)) < 1e-5
