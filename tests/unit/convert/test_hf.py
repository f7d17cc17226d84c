"""transformers converters (convert/hf.py image tower, convert/hf_text.py text tower): tiny random CLIP towers
round-trip into HookedViT / HookedTextTransformer with transformers' own embeddings."""

import pytest
import torch
from conftest import perturb_, rel_err

from vit_lens_clip.convert.hf import convert_hf, is_hf_clip_vision
from vit_lens_clip.convert.hf_text import hf_text_to_hooked
from vit_lens_clip.model.hooked_text import HookedTextTransformer
from vit_lens_clip.model.hooked_vit import HookedViT

transformers = pytest.importorskip("transformers")
TOL = 1e-5


def test_hf_vision_round_trips():
    cfg = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, image_size=32, patch_size=8, projection_dim=24)
    torch.manual_seed(0)
    model = perturb_(transformers.CLIPVisionModelWithProjection(cfg).eval())
    assert is_hf_clip_vision(model) and not is_hf_clip_vision(torch.nn.Linear(2, 2))
    vit_cfg, state = convert_hf(model)
    assert (vit_cfg.n_layers, vit_cfg.n_heads, vit_cfg.act_fn) == (2, 2, "quick_gelu")
    hooked = HookedViT.from_converted(vit_cfg, state)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert rel_err(hooked(x), model(pixel_values=x).image_embeds) <= TOL


def test_hf_text_round_trips_with_padding():
    config = transformers.CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, max_position_embeddings=10, projection_dim=24,
                                         eos_token_id=99)
    torch.manual_seed(0)
    model = perturb_(transformers.CLIPTextModelWithProjection(config).eval())
    cfg, state = hf_text_to_hooked(model)
    hooked = HookedTextTransformer.from_config_and_state(cfg, state)
    lengths = torch.tensor([3, 9])
    tokens = torch.randint(1, 98, (2, 10), generator=torch.Generator().manual_seed(2))
    tokens[0, 3], tokens[0, 4:], tokens[1, 9] = 99, 0, 99
    mask = (torch.arange(10)[None] <= lengths[:, None]).long()
    with torch.no_grad():
        expected = model(input_ids=tokens, attention_mask=mask).text_embeds
        assert rel_err(hooked(tokens, attention_mask=mask), expected) <= TOL
