"""HookedTextTransformer reproduces open_clip's encode_text and HF's text_embeds (random, perturbed weights);
its ActivationCache and the text decomposition sum exactly to the text embedding."""

from __future__ import annotations

import warnings

import open_clip
import pytest
import torch
from conftest import assert_refused, perturb_, random_open_clip, rel_err, tiny_clip
from transformer_lens.FactoredMatrix import FactoredMatrix

from vit_lens_clip.convert.open_clip import UnsupportedTowerError
from vit_lens_clip.decompose.text import decompose_text
from vit_lens_clip.model.hooked_text import HookedTextTransformer

TOL = 1e-5
VISION = dict(image_size=32, patch_size=8, width=64, layers=1, head_width=16)


def _tokens(vocab: int, n: int, lengths: list[int], end_id: int, seed: int = 0) -> torch.Tensor:
    """Sequences of random ids below end_id, an end token at position `length`, zeros after (CLIP-style)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, min(end_id, vocab - 1), (len(lengths), n), generator=g)
    for row, length in enumerate(lengths):
        tokens[row, length] = end_id
        tokens[row, length + 1:] = 0
    return tokens


def _custom_text_clip(seed: int = 0, **text) -> torch.nn.Module:
    torch.manual_seed(seed)
    text_cfg = dict(context_length=12, vocab_size=500, width=32, heads=4, layers=2)
    text_cfg.update(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = open_clip.CustomTextCLIP(embed_dim=24, vision_cfg=VISION, text_cfg=text_cfg)
    return perturb_(model.eval(), seed=seed)


def _check(hooked, expected, tokens, **kw):
    with torch.no_grad():
        got = hooked(tokens, **kw)
    assert got.shape == expected.shape
    err = rel_err(got, expected)
    assert err <= TOL, f"relative error {err:.2e}"


def test_open_clip_clip_matches_encode_text():
    model = tiny_clip()  # open_clip.CLIP: the text tower lives on the model itself
    hooked = HookedTextTransformer.from_open_clip(model)
    tokens = _tokens(49408, 16, [3, 15, 0, 9], end_id=49407)
    with torch.no_grad():
        _check(hooked, model.encode_text(tokens), tokens)
    assert hooked.cfg.causal and hooked.cfg.pool_type == "argmax"


def test_real_architecture_text_tower():
    model = random_open_clip("ViT-B-32")
    hooked = HookedTextTransformer.from_open_clip(model)
    tokens = open_clip.get_tokenizer("ViT-B-32")(["a photo of a cat", "two red circles on a blue square"])
    with torch.no_grad():
        _check(hooked, model.encode_text(tokens), tokens)
    assert (hooked.cfg.n_layers, hooked.cfg.n_heads, hooked.cfg.d_model) == (12, 8, 512)


@pytest.mark.parametrize(
    "variant",
    [
        dict(pool_type="last"),
        dict(pool_type="first"),
        dict(pool_type="eos", eos_id=7),
        dict(proj_bias=True),
        dict(proj_type="none"),
        dict(ls_init_value=0.5),
        dict(no_causal_mask=True),
    ],
    ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()),
)
def test_custom_text_variants(variant):
    model = _custom_text_clip(**variant)
    hooked = HookedTextTransformer.from_open_clip(model)
    end = variant.get("eos_id", 499)
    tokens = _tokens(500, 12, [4, 11, 1], end_id=end)
    with torch.no_grad():
        _check(hooked, model.encode_text(tokens), tokens)
    assert hooked.cfg.causal == (not variant.get("no_causal_mask", False))


def test_bidirectional_pad_mask():
    """open_clip's TextTransformer with no causal mask and use_pad_mask: padded keys are masked."""
    torch.manual_seed(0)
    tower = open_clip.transformer.TextTransformer(
        context_length=12, vocab_size=500, width=32, heads=4, layers=2, output_dim=24,
        no_causal_mask=True, use_pad_mask=True, pad_id=0, pool_type="first",
    )
    perturb_(tower.eval())
    hooked = HookedTextTransformer.from_open_clip(tower)
    assert hooked.cfg.pad_mask and not hooked.cfg.causal
    tokens = _tokens(500, 12, [4, 10], end_id=499)
    with torch.no_grad():
        _check(hooked, tower(tokens), tokens)


def test_quick_gelu_read_from_module():
    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=24, vision_cfg=VISION, text_cfg=dict(context_length=12, vocab_size=500, width=32,
                           heads=4, layers=2), quick_gelu=True)
    perturb_(model.eval())
    hooked = HookedTextTransformer.from_open_clip(model)
    assert hooked.cfg.act_fn == "quick_gelu"
    tokens = _tokens(500, 12, [4, 11], end_id=499)
    with torch.no_grad():
        _check(hooked, model.encode_text(tokens), tokens)


@pytest.mark.parametrize("eos_token_id", [2, 499], ids=["legacy-argmax", "eos"])
def test_hf_text_matches_text_embeds(eos_token_id):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.CLIPTextConfig(
        vocab_size=500, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=12, projection_dim=24, hidden_act="quick_gelu", eos_token_id=eos_token_id,
    )
    model = perturb_(transformers.CLIPTextModelWithProjection(config).eval())
    hooked = HookedTextTransformer.from_hf(model)
    tokens = _tokens(500, 12, [4, 11, 7], end_id=499)
    mask = (torch.arange(12)[None] <= torch.tensor([4, 11, 7])[:, None]).long()
    with torch.no_grad():
        out = model(input_ids=tokens, attention_mask=mask)
        _check(hooked, out.text_embeds, tokens, attention_mask=mask)
        _, cache = hooked.run_with_cache({"input_ids": tokens, "attention_mask": mask})
    # every token's final-normed state, not only the pooled one
    normed = cache["ln_final.hook_normalized"] * hooked.ln_final.w + hooked.ln_final.b
    assert rel_err(normed, out.last_hidden_state) <= TOL
    assert hooked.cfg.pool_type == ("argmax" if eos_token_id == 2 else "eos")


def test_activation_cache_reproduces_output():
    model = _custom_text_clip(proj_bias=True)
    hooked = HookedTextTransformer.from_open_clip(model)
    tokens = _tokens(500, 12, [4, 11, 2], end_id=499)
    with torch.no_grad():
        y, cache = hooked.run_with_cache(tokens)
    index = hooked.pool_index(tokens)
    rows = torch.arange(3)
    L, H = hooked.cfg.n_layers, hooked.cfg.n_heads
    # decompose_resid sums to the final residual at every token
    stack, labels = cache.decompose_resid(return_labels=True)
    assert labels[:2] == ["embed", "pos_embed"]
    assert rel_err(stack.sum(0), cache[f"blocks.{L - 1}.hook_resid_post"]) <= TOL
    # through ln_final (TransformerLens' own-mean convention, no γ/β), gathered at the pooled token
    normed = cache.apply_ln_to_stack(stack).sum(0)[rows, index]
    assert rel_err(normed * hooked.ln_final.w @ hooked.W_proj + hooked.ln_final.b @ hooked.W_proj + hooked.b_proj, y) <= TOL
    # stack_head_results: heads + b_O = each layer's attention output
    heads = cache.stack_head_results(layer=L).reshape(L, H, *tokens.shape, -1)
    for l in range(L):
        assert rel_err(heads[l].sum(0) + hooked.blocks[l].attn.b_O, cache[f"blocks.{l}.hook_attn_out"]) <= TOL
    assert cache["blocks.0.attn.hook_pattern"][0, :, 2, 3:].abs().max() == 0  # causal


@pytest.mark.parametrize("convention", ["equal_share", "own_mean"])
def test_text_decomposition_sums(convention):
    model = _custom_text_clip(proj_bias=True)
    hooked = HookedTextTransformer.from_open_clip(model)
    tokens = _tokens(500, 12, [4, 11, 2], end_id=499)
    parts = decompose_text(hooked, tokens, per_token=True, convention=convention)
    with torch.no_grad():
        expected = model.encode_text(tokens)
    assert rel_err(parts.embedding, expected) <= TOL
    assert rel_err(parts.total(), expected) <= TOL
    assert rel_err(parts.heads.sum(2), parts.attns) <= TOL
    assert rel_err(parts.head_tokens.sum(3), parts.heads) <= TOL
    # the causal mask: tokens after the pooled one carry only their share of b_O, nothing attended
    later = parts.head_tokens[2, :, :, 3:]  # sequence 2 pools at token 2
    assert torch.allclose(later, later[:, :, :1].expand_as(later), atol=1e-6)
    assert not torch.allclose(parts.head_tokens[2, :, :, :3], later[:, :, :3], atol=1e-3)


def test_pooled_pattern_edit_at_eot_matches_brute_force():
    model = tiny_clip()
    hooked = HookedTextTransformer.from_open_clip(model)
    tokens = _tokens(49408, 16, [3, 15, 8], end_id=49407)
    index = hooked.pool_index(tokens)
    head, source = 1, 1

    def zero_pooled(t, hook):
        t[:, head, source] = 0
        return t

    def brute(pattern, hook):
        pattern = pattern.clone()
        pattern[torch.arange(3), head, index, source] = 0
        return pattern

    with torch.no_grad():
        original = hooked(tokens)
        via_pattern = hooked.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_pattern", brute)])
        via_pooled = hooked.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_pooled_pattern", zero_pooled)])
    assert rel_err(via_pattern, original) > 1e-4
    assert rel_err(via_pooled, via_pattern) <= TOL


def test_transformer_lens_weights():
    hooked = HookedTextTransformer.from_open_clip(_custom_text_clip())
    L, H, d, e = hooked.cfg.n_layers, hooked.cfg.n_heads, hooked.cfg.d_model, hooked.cfg.d_head
    assert hooked.W_Q.shape == (L, H, d, e) and hooked.W_O.shape == (L, H, e, d)
    assert isinstance(hooked.OV, FactoredMatrix)
    assert rel_err(hooked.OV.AB[1, 2], hooked.blocks[1].attn.W_V[2] @ hooked.blocks[1].attn.W_O[2]) <= TOL
    assert hooked.cfg.device == torch.device("cpu")


def test_unsupported_text_towers_named():
    coca = random_open_clip("coca_ViT-B-32")
    with pytest.raises(UnsupportedTowerError, match="embed_cls"):
        HookedTextTransformer.from_open_clip(coca)
    with pytest.raises(UnsupportedTowerError, match="NormFormer"):
        HookedTextTransformer.from_open_clip(_custom_text_clip(qk_norm=True))
    with pytest.raises(UnsupportedTowerError, match="text tower"):
        HookedTextTransformer.from_open_clip(torch.nn.Linear(2, 2))


def test_bad_tokens_raise():
    hooked = HookedTextTransformer.from_open_clip(_custom_text_clip())
    with pytest.raises(ValueError, match="context length"):
        hooked(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids"):
        hooked(torch.full((1, 4), 500))
    # float ids break the Int annotation
    assert_refused(lambda: hooked(torch.zeros(1, 4)), "expected integer token ids [batch, n], got torch.Size([1, 4])")


def test_load_clip_exposes_text_model():
    from vit_lens_clip import load_clip

    loaded = load_clip()
    texts = ["a red circle", "two blue squares and a green triangle"]
    tokens = loaded.tokenizer(texts)
    with torch.no_grad():
        expected = loaded.clip.encode_text(tokens)
        got = loaded.text_model(tokens)
        from_strings = loaded.text_model(loaded.text_model.to_tokens(texts))
    assert rel_err(got, expected) <= TOL
    assert torch.equal(from_strings, got)
    assert loaded.text_model is loaded.text_model  # built once


def test_hf_clip_model_dispatch():
    """from_model takes a full transformers CLIPModel (what load_clip('hf:...') holds) and ports its text tower."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    text = dict(vocab_size=500, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=12, eos_token_id=2)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=32,
                  patch_size=8)
    model = perturb_(transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision,
                                                                    projection_dim=24)).eval())
    hooked = HookedTextTransformer.from_model(model)
    tokens = _tokens(500, 12, [4, 11], end_id=499)
    with torch.no_grad():
        expected = model.text_projection(model.text_model(input_ids=tokens).pooler_output)
        _check(hooked, expected, tokens)


def test_hook_pooled_edit_at_eot():
    hooked = HookedTextTransformer.from_open_clip(_custom_text_clip())
    tokens = _tokens(500, 12, [4, 11, 2], end_id=499)
    index = hooked.pool_index(tokens)
    shift = torch.randn(hooked.cfg.d_model, generator=torch.Generator().manual_seed(3))

    def add_eot(t, hook):
        t = t.clone()
        t[torch.arange(3), index] += shift
        return t

    with torch.no_grad():
        original = hooked(tokens)
        brute = hooked.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_post", add_eot)])
        edited = hooked.run_with_hooks(tokens, fwd_hooks=[("hook_pooled", lambda t, hook: t + shift)])
    assert rel_err(brute, original) > 1e-3
    assert rel_err(edited, brute) <= TOL


def test_cli_prints_text_hooks(capsys):
    from vit_lens_clip.app.cli import main

    assert main(["hooks", "--text"]) == 0
    out = capsys.readouterr().out
    assert "vit-lens-clip/shapes (text tower)" in out
    assert "blocks.3.attn.hook_pooled_pattern" in out and "hook_text_embed" in out
