"""The family registry (convert/registry.py): names read, families detected from configs (nothing built) and from
built modules, refusals that list the families once, and every registered family round-tripping a tiny random
model (biases, LayerNorm and LayerScale perturbed) through its converter, exactly."""

from __future__ import annotations

import ast
import time
import warnings
from pathlib import Path
from typing import Callable

import open_clip
import pytest
import timm
import torch
from conftest import perturb_, rel_err, tiny_clip
from open_clip.timm_model import TimmModel

import vit_lens_clip.convert as convert_package
from vit_lens_clip import HookedViT
from vit_lens_clip.convert import registry
from vit_lens_clip.convert.registry import (
    FAMILIES,
    check_name,
    check_open_clip_name,
    check_timm_name,
    convert_tower,
    family_of,
    parse_name,
    supported_families,
)
from vit_lens_clip.embedded import EMBEDDED_MODEL_DIR, EMBEDDED_NAME
from vit_lens_clip.errors import UnknownModelError, UnsupportedTowerError, UserInputError

TOL = 1e-5
SMALL = dict(embed_dim=64, depth=2, num_heads=4, img_size=32)


def _quiet(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build()


def _tiny_timm_vit() -> torch.nn.Module:
    return perturb_(_quiet(lambda: timm.create_model("vit_tiny_patch16_224", **SMALL, num_classes=5)).eval())


def _tiny_pe_core() -> torch.nn.Module:
    model = _quiet(lambda: timm.create_model("vit_pe_core_base_patch16_224", **SMALL, attn_pool_num_heads=2,
                                             num_classes=48))
    with torch.no_grad():  # sharpen the near-uniform attention of timm's init so the rotation matters
        for block in model.blocks:
            (block.attn.qkv.weight if block.attn.qkv is not None else block.attn.q_proj.weight).mul_(8)
    return perturb_(model.eval(), seed=1)


def _tiny_eva02() -> torch.nn.Module:
    model = _quiet(lambda: timm.create_model("eva02_base_patch16_clip_224", **SMALL, patch_size=8, num_classes=48))
    with torch.no_grad():  # as for PE-Core: sharpen the attention so the rotation and the sub-LayerNorm matter
        for block in model.blocks:
            block.attn.q_proj.weight.mul_(8)
    return perturb_(model.eval(), seed=4)


def _tiny_open_clip_timm() -> torch.nn.Module:
    visual = _quiet(lambda: TimmModel("vit_base_patch16_siglip_224", embed_dim=48, pool="map", proj="linear",
                                      proj_bias=True))
    visual.trunk = _quiet(lambda: timm.create_model("vit_base_patch16_siglip_224", **SMALL, num_classes=0))
    visual.head.proj = torch.nn.Linear(64, 48, bias=True)
    return perturb_(visual.eval(), seed=2)


def _tiny_hf() -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, image_size=32, patch_size=8, projection_dim=48)
    return perturb_(_quiet(lambda: transformers.CLIPVisionModelWithProjection(cfg)).eval(), seed=3)


def _forward_open_clip(model, x):
    return model.encode_image(x) if hasattr(model, "encode_image") else model(x)


# family name → (a tiny random model of it, its own forward); a new family without one fails the test below
TINY = {
    "open_clip": (tiny_clip, _forward_open_clip),
    "open_clip_timm": (_tiny_open_clip_timm, _forward_open_clip),
    "timm": (_tiny_timm_vit, lambda m, x: m(x)),
    "pe_core": (_tiny_pe_core, lambda m, x: m(x)),
    "eva02": (_tiny_eva02, lambda m, x: m(x)),
    "hf": (_tiny_hf, lambda m, x: m(pixel_values=x).image_embeds),
}


def test_every_family_has_a_tiny_model_here():
    assert sorted(TINY) == sorted(f.name for f in FAMILIES)
    assert len({f.name for f in FAMILIES}) == len(FAMILIES)
    assert all(f.source in registry.SOURCES for f in FAMILIES)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_every_family_round_trips_a_tiny_random_model(family):
    build, forward = TINY[family.name]
    model = build()
    assert family_of(model) is family and family_of(model, family.source) is family
    cfg, state = convert_tower(model, "tiny", source=family.source)
    hooked = HookedViT.from_converted(cfg, state)
    x = torch.randn(2, 3, *cfg.image_size, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = forward(model, x)
        assert rel_err(hooked(x), expected) <= TOL
    # the port holds its own copy: moving the source's biases and norms moves the source, not the port
    perturb_(model, scale=0.5, seed=9)
    with torch.no_grad():
        moved = forward(model, x)
    assert rel_err(moved, expected) > 1e-4 and rel_err(hooked(x), expected) <= TOL


def test_the_from_methods_dispatch_through_the_registry():
    timm_vit, clip = _tiny_timm_vit(), tiny_clip()
    assert HookedViT.from_timm(timm_vit).cfg.pool_type == "tok"
    assert HookedViT.from_open_clip(clip).cfg.n_layers == 3
    wrong_library = r"timm image tower VisionTransformer \(open_clip.transformer\) is not supported"
    with pytest.raises(UnsupportedTowerError, match=wrong_library) as info:
        HookedViT.from_timm(clip)  # a family of another library is not guessed
    assert info.value.args[0].count("; supported: ") == 1
    with pytest.raises(UnsupportedTowerError, match=r"open_clip image tower VisionTransformer \(timm.models"):
        HookedViT.from_open_clip(timm_vit)


# ------------------------------------------------------------------------------------------- names
@pytest.mark.parametrize("name, source, identifier, schema", [
    ("timm:deit_tiny_patch16_224", "timm", "deit_tiny_patch16_224", ""),
    ("hf:openai/clip-vit-base-patch32", "hf", "openai/clip-vit-base-patch32", ""),
    ("hf:/models/clip", "hf", "/models/clip", ""),
    ("local-dir:/models/clip", "open_clip", "local-dir:/models/clip", "local-dir"),
    ("hf-hub:timm/ViT-B-16-SigLIP", "open_clip", "hf-hub:timm/ViT-B-16-SigLIP", "hf-hub"),
    ("ViT-B-16", "open_clip", "ViT-B-16", ""),
])
def test_parse_name(name, source, identifier, schema):
    parsed = parse_name(name)
    assert (parsed.source, parsed.identifier, parsed.schema, parsed.name) == (source, identifier, schema, name)


def test_parse_the_embedded_name_and_bad_names():
    parsed = parse_name(EMBEDDED_NAME)
    assert (parsed.source, parsed.schema, parsed.name) == ("open_clip", "local-dir", EMBEDDED_NAME)
    assert parsed.local_dir == Path(EMBEDDED_MODEL_DIR)
    assert parse_name("local-dir:/a/b").local_dir == Path("/a/b") and parse_name("ViT-B-16").local_dir is None
    for bad in ("", "  ", "timm:", "hf:"):
        with pytest.raises(UserInputError):
            parse_name(bad)


# ------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name, family", [
    ("timm:vit_small_patch14_reg4_dinov2", "timm"),
    ("timm:deit_tiny_patch16_224", "timm"),
    ("timm:vit_pe_core_base_patch16_224", "pe_core"),
    ("ViT-B-16", "open_clip"),
    ("coca_ViT-B-32", "open_clip"),
    ("ViT-B-16-SigLIP", "open_clip_timm"),
    ("PE-Core-B-16", "open_clip_timm"),
    ("timm:eva02_tiny_patch14_224", "eva02"),
    ("timm:eva02_large_patch14_clip_224", "eva02"),
    ("EVA02-L-14", "open_clip_timm"),
])
def test_detection_from_the_config_builds_nothing(name, family, monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(timm, "create_model", no_build)
    monkeypatch.setattr(open_clip, "create_model", no_build)
    monkeypatch.setattr(open_clip, "create_model_and_transforms", no_build)
    assert check_name(parse_name(name)).name == family


def test_folders_and_transformers_names_are_checked_once_built():
    for name in ("local-dir:/models/clip", "hf-hub:org/repo", "hf:org/repo", EMBEDDED_NAME):
        assert check_name(parse_name(name)) is None


@pytest.mark.parametrize("check, name, words", [
    (check_open_clip_name, "RN50", "ModifiedResNet"),
    (check_open_clip_name, "EVA01-g-14", "only EVA02"),
    (check_open_clip_name, "convnext_base_w", "timm.models.convnext"),
    (check_timm_name, "eva_giant_patch14_224", "only EVA02"),
    (check_timm_name, "convnext_tiny", "timm.models.convnext"),
])
def test_refusal_from_the_config_lists_every_family_once(check, name, words):
    start = time.perf_counter()
    with pytest.raises(UnsupportedTowerError, match=words) as info:
        check(name)
    message = str(info.value)
    assert message.count("; supported: ") == 1 and message.endswith(supported_families())
    assert all(message.count(f.line) == 1 for f in FAMILIES)
    assert time.perf_counter() - start < 5


def test_unknown_names_are_not_guessed():
    with pytest.raises(UnknownModelError, match="unknown timm model"):
        check_timm_name("vit_nonexistent_patch99")
    with pytest.raises(UnknownModelError, match="unknown open_clip model"):
        check_open_clip_name("ViT-Q-99")


# ------------------------------------------------------------------------------------------- the shape of convert/
CONVERT = Path(convert_package.__file__).parent


def _trees():
    return {p.name: ast.parse(p.read_text(encoding="utf-8")) for p in sorted(CONVERT.glob("*.py"))}


def test_converters_import_no_private_names_of_each_other():
    wrong = [f"{file}: {node.module}.{alias.name}" for file, tree in _trees().items() for node in ast.walk(tree)
             if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vit_lens_clip.")
             for alias in node.names if alias.name.startswith("_")]
    assert not wrong, wrong


def test_no_class_name_comparisons_in_convert():
    """Families and modules are told apart with isinstance / ``type(m) is Cls`` or the registry's detections."""
    wrong = []
    for file, tree in _trees().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn))
                                                     for op in node.ops):
                sides = [node.left, *node.comparators]
                if any(isinstance(s, ast.Attribute) and s.attr == "__name__" for s in sides):
                    wrong.append(f"{file}:{node.lineno}")
    assert not wrong, wrong
