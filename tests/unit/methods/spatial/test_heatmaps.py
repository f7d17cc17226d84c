"""Spatial heatmaps, baseline relevance maps and the zero-shot segmentation benchmark, on tiny random models."""

import argparse
import csv
import json
from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import random_open_clip, rel_err, tiny_clip
from PIL import Image
from safetensors.torch import save_file

from vit_lens_clip.app.benchmarks.heatmaps import bench_heatmaps
from vit_lens_clip.app.config import add_segment_arguments
from vit_lens_clip.app.segment import run_segment_command
from vit_lens_clip.datasets.geometry import PreprocessGeometry, upsample_patch_map
from vit_lens_clip.datasets.segmentation import MaskFolder, segmentation_loader
from vit_lens_clip.datasets.shapes_adapters import ShapesSegmentation
from vit_lens_clip.decompose.parts import decompose
from vit_lens_clip.methods.spatial import registry
from vit_lens_clip.methods.spatial.baselines import (
    attention_rollout,
    chefer,
    gradcam,
    raw_attention,
)
from vit_lens_clip.methods.spatial.evaluate import (
    METHODS,
    evaluate_segmentation,
    segmentation_examples,
    write_segmentation_report,
)
from vit_lens_clip.methods.spatial.heatmaps import (
    class_directions,
    class_heatmap,
    heatmap_to_pixels,
    joint_map,
    predict_classes,
    text_heatmap,
)
from vit_lens_clip.methods.spatial.metrics import SegmentationMetrics, segment_batch, zero_shot_segment
from vit_lens_clip.model.hooked_vit import HookedViT


def _hooked(seed=0, **vision):
    return HookedViT.from_open_clip(tiny_clip(seed, **vision))


def _texts(k, d=48, seed=3):
    return F.normalize(torch.randn(k, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _reference_patch_scores(model, images, texts):
    """ĉ_{l,h,m} · t from the materialised (head, source) pieces: [B, L, H, n_patches, K]."""
    dec = decompose(model, images, per_source=True)
    return torch.einsum("blhmd,kd->blhmk", dec.head_sources[:, :, :, 1:].double(), texts.double())


def _grid(model, per_patch):
    gh, gw = model.cfg.grid_size
    return per_patch.reshape(*per_patch.shape[:-1], gh, gw)


# ------------------------------------------------------------------------------------------ (a) exactness
def test_text_heatmap_equals_sum_of_source_pieces_tiny(images):
    model = _hooked()
    x, texts = images((32, 32), batch=2), _texts(3)
    ref = _reference_patch_scores(model, x, texts).sum((1, 2))  # [B, m, K]
    got = text_heatmap(model, x, texts)
    assert got.shape == (2, 3, 4, 4)
    assert rel_err(got, _grid(model, ref.transpose(1, 2))) <= 1e-5


def test_text_heatmap_equals_sum_of_source_pieces_vit_b16(images):
    model = HookedViT.from_open_clip(random_open_clip("ViT-B-16"))
    x = images((224, 224), batch=1)
    texts = _texts(2, d=model.cfg.output_dim)
    ref = _reference_patch_scores(model, x, texts).sum((1, 2))
    got = text_heatmap(model, x, texts)
    assert got.shape == (1, 2, 14, 14)
    assert rel_err(got, _grid(model, ref.transpose(1, 2))) <= 1e-5


def test_class_heatmap_is_predicted_class_minus_mean_class_map(images):
    model = _hooked()
    x = images((32, 32), batch=3)
    classifier = _texts(5).T  # [D, C]
    labels = predict_classes(model, x, classifier)
    all_maps = text_heatmap(model, x, classifier.T)  # [B, C, gh, gw]: every class, the expensive way
    expected = all_maps[torch.arange(3), labels] - all_maps.mean(1)
    assert rel_err(class_heatmap(model, x, classifier), expected) <= 1e-5
    forced = torch.tensor([4, 0, 4])
    expected_forced = all_maps[torch.arange(3), forced] - all_maps.mean(1)
    assert rel_err(class_heatmap(model, x, classifier, labels=forced), expected_forced) <= 1e-5
    assert torch.allclose(class_directions(classifier, forced)[1], classifier[:, 0] - classifier.mean(1))


# -------------------------------------------------------------------------------------- (b) restrictions
def test_layer_and_head_restrictions_sum_correctly(images):
    model = _hooked()
    x, texts = images((32, 32), batch=2), _texts(2)
    pieces = _reference_patch_scores(model, x, texts)  # [B, L, H, m, K]
    ref_layers = _grid(model, pieces[:, [0, 2]].sum((1, 2)).transpose(1, 2))
    assert rel_err(text_heatmap(model, x, texts, layers=[0, -1]), ref_layers) <= 1e-5

    pairs = [(1, 3), (2, 0), (2, 2)]
    ref_heads = sum(pieces[:, l, h] for l, h in pairs)
    assert rel_err(text_heatmap(model, x, texts, heads=pairs), _grid(model, ref_heads.transpose(1, 2))) <= 1e-5
    assert rel_err(text_heatmap(model, x, texts, layers=[1, 2], heads=pairs),
                   _grid(model, ref_heads.transpose(1, 2))) <= 1e-5

    single = joint_map(model, x, layer=1, head=3, text=texts[1])
    assert single.shape == (2, 4, 4)
    assert rel_err(single, _grid(model, pieces[:, 1, 3, :, 1])) <= 1e-5

    per_layer = sum(text_heatmap(model, x, texts, layers=[l]) for l in range(3))
    assert rel_err(per_layer, text_heatmap(model, x, texts)) <= 1e-5
    with pytest.raises(ValueError):
        text_heatmap(model, x, texts, layers=[0], heads=pairs)
    with pytest.raises(ValueError):
        text_heatmap(model, x, texts, heads=[(0, 9)])


def test_heatmap_to_pixels_model_and_original_frames(images):
    model = _hooked()
    maps = text_heatmap(model, images((32, 32), batch=2), _texts(1))[:, 0]
    pixels = heatmap_to_pixels(maps, 32)
    assert pixels.shape == (2, 32, 32)
    assert torch.allclose(pixels, F.interpolate(maps[:, None], scale_factor=8, mode="bilinear")[:, 0])
    geoms = [PreprocessGeometry.from_image_size(32, (40, 64)), PreprocessGeometry.from_image_size(32, (32, 32))]
    originals = heatmap_to_pixels(maps, 32, geoms)
    assert originals[0].shape == (40, 64) and originals[1].shape == (32, 32)
    assert torch.isnan(originals[0]).any() and not torch.isnan(originals[1]).any()
    assert torch.allclose(originals[1], pixels[1], atol=1e-6)


# ----------------------------------------------------------------------------------------- (c) baselines
def _pattern_cache(model, x):
    _, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_pattern") or "resid" in n)
    return cache


def test_baseline_shapes(images):
    model = _hooked()
    x, t = images((32, 32), batch=2), _texts(2)
    for out in (raw_attention(model, x), attention_rollout(model, x), gradcam(model, x, t), chefer(model, x, t[0])):
        assert out.shape == (2, 4, 4) and torch.isfinite(out).all()


def test_raw_attention_and_rollout_match_hand_computation(images):
    model = _hooked(layers=2)
    x = images((32, 32), batch=2)
    cache = _pattern_cache(model, x)
    A0, A1 = (cache[f"blocks.{l}.attn.hook_pattern"].double().mean(1) for l in range(2))
    eye = torch.eye(A0.shape[-1], dtype=torch.float64)
    assert rel_err(raw_attention(model, x), _grid(model, A1[:, 0, 1:])) <= 1e-5
    # rows of A sum to 1, so rows-normalised (A + I) is (A + I) / 2
    rolled = ((A1 + eye) / 2) @ ((A0 + eye) / 2)
    assert rel_err(attention_rollout(model, x), _grid(model, rolled[:, 0, 1:])) <= 1e-5

    one_layer = _hooked(layers=1)
    A = _pattern_cache(one_layer, x)["blocks.0.attn.hook_pattern"].double().mean(1)
    assert rel_err(attention_rollout(one_layer, x), _grid(one_layer, ((A + eye) / 2)[:, 0, 1:])) <= 1e-5


def _score_from_resid_mid(model, resid_mid, t):
    """y·t as a function of block 0's resid_mid (1-layer model): MLP, final LN at the pooled token, projection."""
    block = model.blocks[0]
    resid_post = resid_mid + block.mlp(block.ln2(resid_mid))
    return ((model.ln_final(resid_post[:, 0]) @ model.W_proj) * t).sum()


def test_gradcam_matches_hand_computation_one_layer(images):
    model = _hooked(layers=1)
    x, t = images((32, 32), batch=2), _texts(2)
    tokens = _pattern_cache(model, x)["blocks.0.hook_resid_pre"].detach().requires_grad_(True)
    score = ((model.pool(model.blocks[0](tokens)) @ model.W_proj) * t).sum()
    (grad,) = torch.autograd.grad(score, tokens)
    alpha = grad[:, 1:].mean(1)
    expected = torch.einsum("bmd,bd->bm", tokens[:, 1:].detach(), alpha).clamp(min=0)
    got = gradcam(model, x, t)
    assert got.abs().sum() > 0
    assert rel_err(got, _grid(model, expected)) <= 1e-5


def test_chefer_matches_hand_computation_one_layer(images):
    model = _hooked(layers=1)
    x, t = images((32, 32), batch=2), _texts(2)
    _, cache = model.run_with_cache(x)
    A = cache["blocks.0.attn.hook_pattern"]  # [B, H, N, N]
    resid_mid = cache["blocks.0.hook_resid_mid"].detach().requires_grad_(True)
    (g,) = torch.autograd.grad(_score_from_resid_mid(model, resid_mid, t), resid_mid)
    # only the pooled query row reaches the output: ∂(y·t)/∂A[h, 0, s] = g_0 · (v_{s,h} W_O^h)
    value_out = torch.einsum("bshe,hed->bhsd", cache["blocks.0.attn.hook_v"], model.blocks[0].attn.W_O)
    grad_row = torch.einsum("bhsd,bd->bhs", value_out, g[:, 0])
    relevance_row = (grad_row * A[:, :, 0]).clamp(min=0).mean(1)  # (I + Ā) row 0 over patches = Ā[0, 1:]
    got = chefer(model, x, t)
    assert got.abs().sum() > 0
    assert rel_err(got, _grid(model, relevance_row[:, 1:])) <= 1e-4


def test_gradient_baselines_work_with_frozen_parameters(images):
    model = _hooked()
    x, t = images((32, 32), batch=2), _texts(2)
    expected = chefer(model, x, t), gradcam(model, x, t)
    for p in model.parameters():
        p.requires_grad_(False)
    frozen = chefer(model, x, t), gradcam(model, x, t)
    for a, b in zip(frozen, expected):
        assert b.abs().sum() > 0 and torch.allclose(a, b)


# ------------------------------------------------------------------------------------ (d) end to end
PREPROCESS = open_clip.image_transform(32, is_train=False)


def _write_mask_folder(root, sizes=((40, 48), (48, 40), (32, 32), (36, 44), (44, 36))):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        image = (rng.random((h, w, 3)) * 80).astype(np.uint8)
        mask = np.zeros((h, w), dtype=np.uint8)
        mask[h // 4 : 3 * h // 4, w // 5 : w // 2 + i] = 255
        image[mask > 0] = 230
        Image.fromarray(image).save(root / "images" / f"img{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"img{i}.png")
    return MaskFolder(root, PREPROCESS)


def test_evaluate_segmentation_end_to_end(tmp_path):
    dataset = _write_mask_folder(tmp_path / "data")
    loaded = SimpleNamespace(model=_hooked(), preprocess=PREPROCESS)
    classifier = _texts(4).T
    results = evaluate_segmentation(loaded, dataset, classifier, batch_size=2, limit=4, progress=False)
    assert set(results) == set(METHODS)
    for r in results.values():
        assert r["n_images"] == 4
        assert 0 <= r["pixel_accuracy"] <= 1 and 0 <= r["miou"] <= 1 and 0 <= r["mean_ap"] <= 1

    # the decomposition row equals a one-image-at-a-time recomputation of the published protocol
    manual = SegmentationMetrics()
    for i in range(4):
        item = dataset[i]
        patch_map = class_heatmap(loaded.model, item["image"][None], classifier)
        seg = zero_shot_segment(upsample_patch_map(patch_map, 32))
        manual.update(seg.soft_map, seg.mask, item["mask"][None])
    expected = manual.compute()
    for key in ("pixel_accuracy", "miou", "mean_ap"):
        assert results["decomposition"][key] == pytest.approx(expected[key], abs=1e-9)

    original = evaluate_segmentation(loaded, dataset, classifier, methods=("decomposition", "rollout"),
                                     batch_size=3, frame="original", progress=False)
    assert original["rollout"]["n_images"] == len(dataset)

    examples = segmentation_examples(loaded, dataset, classifier, n_examples=2)
    assert len(examples) == 2 and examples[0].image.shape == (32, 32, 3)
    assert set(examples[0].soft_maps) == set(METHODS)
    paths = write_segmentation_report(results, examples, tmp_path / "report")
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == list(METHODS)
    assert float(rows[0]["miou"]) == pytest.approx(results["decomposition"]["miou"])
    markdown = paths["markdown"].read_text()
    assert "Chefer et al. 2021" in markdown and "| mIoU |" in markdown
    page = paths["html"].read_text()
    assert page.count("Plotly.newPlot") == 2  # one figure per example
    assert page.count("plotly.js v") == 1  # the library inlined once: no network needed
    assert "cdn.plot.ly" not in page.split("plotly.js v")[0]

    timings = bench_heatmaps(loaded.model, dataset[0]["image"][None], classifier.T, repeats=1, verbose=False)
    assert set(timings) == {"forward", *METHODS} and all(v["seconds"] > 0 for v in timings.values())


def test_segmentation_loader_and_segment_batch(tmp_path):
    """The public batch helpers that the benchmark and the SAE segmentation share."""
    dataset = _write_mask_folder(tmp_path / "data")
    batches = list(segmentation_loader(dataset, batch_size=2, limit=3))
    assert [b["index"].tolist() for b in batches] == [[0, 1], [2]]
    with pytest.raises(ValueError, match="batch_size"):
        segmentation_loader(dataset, batch_size=0)
    with pytest.raises(ValueError, match="limit"):
        segmentation_loader(dataset, batch_size=2, limit=0)

    batch = batches[0]
    maps = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(0))
    model_frame = segment_batch(maps, batch, "model", (32, 32))
    expected = zero_shot_segment(upsample_patch_map(maps, 32))
    for i, image in enumerate(model_frame):
        assert torch.equal(image.mask, expected.mask[i]) and torch.equal(image.ground_truth, batch["mask"][i])
        torch.testing.assert_close(image.soft_map, expected.soft_map[i], rtol=0, atol=0)
    for i, image in enumerate(segment_batch(maps, batch, "original")):
        original = zero_shot_segment(batch["geometry"][i].model_map_to_original(maps[i]))
        assert image.mask.shape == batch["original_mask"][i].shape == image.ground_truth.shape
        assert torch.equal(image.mask, original.mask) and torch.equal(image.ground_truth, batch["original_mask"][i])
    with pytest.raises(ValueError, match="image_size"):
        segment_batch(maps, batch, "model")


def test_shapes_adapter_masks_follow_the_scene():
    dataset = ShapesSegmentation(3, PREPROCESS, image_size=64, seed=5)
    item = dataset[1]
    scene = dataset.scene(1)
    assert item["image"].shape == (3, 32, 32)
    assert torch.equal(item["original_mask"], torch.from_numpy(scene.foreground))
    assert torch.equal(item["mask"], item["geometry"].mask_to_model_input(scene.foreground))
    assert 0 < item["mask"].float().mean() < 0.5 and item["shape"] == scene.attributes.shape


def test_segment_command_on_a_local_model(tmp_path, capsys):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    clip = tiny_clip()
    vision = {"image_size": 32, "patch_size": 8, "width": 64, "layers": 3, "head_width": 16, "mlp_ratio": 4.0}
    text = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
    config = {"model_cfg": {"embed_dim": 48, "vision_cfg": vision, "text_cfg": text},
              "preprocess_cfg": {"size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}}
    (model_dir / "open_clip_config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(model_dir / "open_clip_model.safetensors"))
    data = tmp_path / "data"
    _write_mask_folder(data, sizes=((40, 48), (48, 40), (32, 32)))
    (tmp_path / "classes.txt").write_text("cat\ndog\nboat\n")
    parser = add_segment_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--model", f"local-dir:{model_dir}", "--dataset", "folder", str(data),
                              "--classes", str(tmp_path / "classes.txt"), "--templates", "simple",
                              "--out", str(tmp_path / "out"), "--batch-size", "2", "--examples", "2",
                              "--methods", "decomposition", "raw_attention"])
    results = run_segment_command(args)
    assert set(results) == {"decomposition", "raw_attention"} and results["decomposition"]["n_images"] == 3
    for name in ("segmentation.csv", "segmentation.md", "segmentation.html"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    with pytest.raises(ValueError):
        run_segment_command(parser.parse_args(["--model", f"local-dir:{model_dir}", "--dataset", "folder"]))


def test_a_registered_map_method_runs_with_one_entry(tmp_path, monkeypatch):
    """Adding a baseline is one function plus one registry entry: the benchmark scores it like the others."""
    def centre(model, images, classifier, labels):
        grid_h, grid_w = model.cfg.grid_size
        out = torch.zeros(images.shape[0], grid_h, grid_w)
        out[:, grid_h // 2, grid_w // 2] = 1.0
        return out

    monkeypatch.setitem(registry.MAP_METHODS, "centre", registry.MapMethod("centre", "centre patch", False, centre))
    dataset = _write_mask_folder(tmp_path / "data")
    loaded = SimpleNamespace(model=_hooked(), preprocess=PREPROCESS)
    results = evaluate_segmentation(loaded, dataset, _texts(4).T, methods=["raw_attention", "centre"],
                                    batch_size=2, limit=4, progress=False)
    assert set(results) == {"raw_attention", "centre"} and results["centre"]["n_images"] == 4
