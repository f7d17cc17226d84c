"""``vit-lens-clip report`` on every supported family: CLIP, CoCa, SigLIP, SigLIP2, PE-Core and EVA02, each a tiny
random-weight open_clip model written as a ``local-dir:`` folder (open_clip_config.json + safetensors weights),
offline, with a random SAE so that every section runs. SigLIP's tokenizer is a tiny local folder given with
``--tokenizer`` (the hub's is not reachable offline); the others use open_clip's bundled tokenizer.

open_clip builds the SigLIP, PE-Core and EVA02 image towers with timm by name, at full size; the fixture registers
tiny timm models built by the SAME timm builders as the full-size ones (same timm module, so the family registry
reads them as it reads the real names), which keeps each report to a few seconds."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import open_clip
import pytest
import timm
import torch
from conftest import perturb_
from safetensors.torch import save_file
from timm.models import register_model

from vit_lens_clip.app.cli import main
from vit_lens_clip.loading import load_clip
from vit_lens_clip.methods.sae.formats import save_sae_lens
from vit_lens_clip.methods.sae.sae import SAEConfig, SparseAutoencoder

WIDTH = 64
TINY_TRUNK = dict(embed_dim=WIDTH, depth=2, num_heads=4, img_size=48, patch_size=12)
TRUNKS = {  # tiny timm trunk -> (the full-size model whose builder makes it, extra arguments)
    "vit_tinytest_patch12_siglip_48": ("vit_base_patch16_siglip_224", {}),
    "vit_pe_core_tinytest_patch12_48": ("vit_pe_core_base_patch16_224", {"attn_pool_num_heads": 2}),
    "eva02_tinytest_patch12_clip_48": ("eva02_base_patch16_clip_224", {}),
}
CLIP_TEXT = dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1)  # open_clip's bundled tokenizer
SIGLIP_TEXT = dict(context_length=16, vocab_size=64, hf_tokenizer_name="timm/ViT-B-16-SigLIP",
                   tokenizer_kwargs={"clean": "canonicalize"}, width=32, heads=2, layers=1, no_causal_mask=True,
                   proj_bias=True, pool_type="last", norm_kwargs={"eps": 1e-6})


def _timm_vision(trunk: str, pool: str, proj) -> dict:
    return dict(image_size=48, timm_model_name=trunk, timm_model_pretrained=False, timm_pool=pool, timm_proj=proj)


CONFIGS = {  # the shapes world draws at 48 px at least
    "clip": dict(embed_dim=48, text_cfg=CLIP_TEXT,
                 vision_cfg=dict(image_size=48, patch_size=12, width=WIDTH, layers=2, head_width=16)),
    "coca": dict(embed_dim=48, custom_text=True, text_cfg={**CLIP_TEXT, "embed_cls": True, "output_tokens": True},
                 vision_cfg=dict(image_size=48, patch_size=12, width=WIDTH, layers=2, head_width=16,
                                 attentional_pool=True, attn_pooler_heads=4, output_tokens=True),
                 multimodal_cfg={**CLIP_TEXT, "attn_pooler_heads": 2}),
    "siglip": dict(embed_dim=WIDTH, init_logit_bias=-10, custom_text=True, text_cfg=SIGLIP_TEXT,
                   vision_cfg=_timm_vision("vit_tinytest_patch12_siglip_48", "map", "none")),
    "siglip2": dict(embed_dim=WIDTH, init_logit_bias=-10, custom_text=True,
                    vision_cfg=_timm_vision("vit_tinytest_patch12_siglip_48", "map", "none"),
                    text_cfg={**SIGLIP_TEXT, "hf_tokenizer_name": "timm/ViT-B-16-SigLIP2",
                              "act_kwargs": {"approximate": "tanh"}}),
    "pe_core": dict(embed_dim=48, custom_text=True, text_cfg=CLIP_TEXT,
                    vision_cfg=_timm_vision("vit_pe_core_tinytest_patch12_48", "map", None)),
    "eva02": dict(embed_dim=48, custom_text=True, text_cfg=CLIP_TEXT,
                  vision_cfg=_timm_vision("eva02_tinytest_patch12_clip_48", "token", None)),
}
PREPROCESS = dict(size=48, mode="RGB", mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], interpolation="bicubic",
                  resize_mode="shortest", fill_color=0)
NEEDS_TOKENIZER = ("siglip", "siglip2")


def register_tiny_trunks() -> None:
    """Register each tiny trunk under its family's timm module (idempotent)."""
    for name, (base, extra) in TRUNKS.items():
        if timm.is_model(name):
            continue

        def entry(pretrained=False, _base=base, _extra=extra, **kwargs):
            return timm.create_model(_base, pretrained=False, **{**TINY_TRUNK, **_extra, **kwargs})

        entry.__name__ = entry.__qualname__ = name
        entry.__module__ = timm.models.model_entrypoint(base).__module__
        register_model(entry)


def unregister_tiny_trunks() -> None:
    """Take the tiny trunks out of timm's registry again (later tests list timm's models for suggestions)."""
    from timm.models import _registry

    for name in TRUNKS:
        if name in _registry._model_entrypoints:
            module = sys.modules[_registry._model_entrypoints.pop(name).__module__]
            _registry._clear_model_entries(name)
            if name in getattr(module, "__all__", []):
                module.__all__.remove(name)


def write_model(folder: Path, family: str, seed: int) -> Path:
    """A local-dir folder: the family's tiny config and its random weights (1-D parameters perturbed)."""
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": CONFIGS[family],
                                                              "preprocess_cfg": PREPROCESS}))
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    with torch.no_grad():  # open_clip leaves CoCa's text_decoder.text_projection as torch.empty (its init is commented
        for name, p in model.named_parameters():  # out): memory garbage, NaN now and then, which the load refuses
            if name.endswith("text_decoder.text_projection"):
                torch.nn.init.normal_(p, std=p.shape[0] ** -0.5)
    perturb_(model, seed=seed)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def write_tokenizer(folder: Path) -> Path:
    """A tiny word-level Hugging Face tokenizer folder (as AutoTokenizer.save_pretrained writes one)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "a the photo of red green blue yellow circle square triangle star on in left right top bottom".split()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(str(folder))
    return folder


def write_sae(folder: Path) -> Path:
    """A random TopK SAE on blocks.1.hook_resid_mid (every tiny tower has width 64), in SAELens' layout."""
    sae = SparseAutoencoder(SAEConfig(d_in=WIDTH, d_sae=32, hook_name="blocks.1.hook_resid_mid", architecture="topk",
                                      k=4))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim == 2 else 0.05))
    return save_sae_lens(sae, folder)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine two threads wait on each other
    (measured: 40 s against 3 s for one report with the load average at 5 on 2 cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_families(tmp_path_factory):
    """family -> its local-dir folder, plus "tokenizer" and "sae" folders."""
    register_tiny_trunks()
    root = tmp_path_factory.mktemp("families")
    folders = {family: write_model(root / family, family, seed) for seed, family in enumerate(CONFIGS)}
    yield {**folders, "tokenizer": write_tokenizer(root / "tokenizer"), "sae": write_sae(root / "sae")}
    unregister_tiny_trunks()


def _model_arguments(tiny_families, family: str) -> list[str]:
    tokenizer = ["--tokenizer", str(tiny_families["tokenizer"])] if family in NEEDS_TOKENIZER else []
    return ["--model", f"local-dir:{tiny_families[family]}", *tokenizer]


EXPECTED_TOWER = {  # what the loaded HookedViT must be, so that each test really runs its family
    "clip": dict(pooler=False, sub_ln=False, rotary=False, class_token=True),
    "coca": dict(pooler=True, sub_ln=False, rotary=False, class_token=True),
    "siglip": dict(pooler=True, sub_ln=False, rotary=False, class_token=False),
    "siglip2": dict(pooler=True, sub_ln=False, rotary=False, class_token=False),
    "pe_core": dict(pooler=True, sub_ln=False, rotary=True, class_token=True),
    "eva02": dict(pooler=False, sub_ln=True, rotary=True, class_token=True),
}


@pytest.mark.parametrize("family", list(CONFIGS))
def test_report_runs_every_section_on_each_family(tiny_families, family, tmp_path):
    tokenizer = str(tiny_families["tokenizer"]) if family in NEEDS_TOKENIZER else None
    model = load_clip(f"local-dir:{tiny_families[family]}", tokenizer=tokenizer).model
    attn = model.blocks[0].attn
    assert dict(pooler=model.attn_pool is not None, sub_ln=getattr(attn, "ln_z", None) is not None,
                rotary=bool(attn.rotary), class_token=model.cfg.class_token) == EXPECTED_TOWER[family]

    out = tmp_path / "report"
    code = main(["report", *_model_arguments(tiny_families, family), "--sae", str(tiny_families["sae"]),
                 "--out", str(out), "--n-images", "8", "--segmentation-images", "4", "--spurious-images", "8",
                 "--neuron-images", "8", "--last-layers", "2", "--k", "2", "--batch-size", "8", "--quiet"])
    assert code == 0
    numbers = json.loads((out / "results.json").read_text())
    assert numbers["skipped_sections"] == {}  # every section ran
    assert set(numbers["timings_s"]) >= {"data", "decomposition", "zero_shot", "ablation", "textspan", "completeness",
                                         "heatmaps", "segmentation", "spurious", "attention", "neurons", "sae"}
    assert numbers["model"]["layers"] == 2 and numbers["model"]["width"] == WIDTH
    seg = numbers["segmentation"]
    assert set(seg) == {"decomposition", "raw_attention", "rollout", "gradcam", "chefer"}
    assert all(0 <= m["miou"] <= 1 for m in seg.values())
    assert len(numbers["textspan"]) > 0 and numbers["neurons"]["layers"]
    assert set(numbers["sae"]["segmentation"]) == {"decomposition", "sae_features", "sae_top_feature"}
    assert all(len(row["nearest_texts"]) == 3 for row in numbers["sae"]["per_feature"])
    assert "Attention patterns" in (out / "report.html").read_text()


def test_hooks_text_on_siglip_reads_the_local_tokenizer(tiny_families, capsys):
    assert main(["hooks", "--text", *_model_arguments(tiny_families, "siglip")]) == 0
    printed = capsys.readouterr().out
    assert "(text tower)" in printed and "hook_embed" in printed
    # without --tokenizer, offline, SigLIP's hub tokenizer is refused in one line that names the option
    assert main(["hooks", "--text", "--model", f"local-dir:{tiny_families['siglip']}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--tokenizer" in err
