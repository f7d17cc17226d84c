"""embedded/train.py: the positional table, the schedule, the eval-identical input tensor, a deterministic model,
and an exported local-dir folder that loads back to the same model (float16 weights)."""

import math

import numpy as np
import torch
from PIL import Image

from vit_lens_clip.embedded.evaluate import load_model
from vit_lens_clip.embedded.train import build_model, export_local_dir, images_to_tensor, lr_at, sincos_2d


def test_sincos_table():
    table = sincos_2d(4, 16)
    assert table.shape == (17, 16) and (table[0] == 0).all()
    # patch (r, c) = row-major index 1 + 4r + c; the first quarter is sin(r · f0) with f0 = 1
    assert torch.allclose(table[1 + 4 * 2 + 3, 0], torch.tensor(math.sin(2.0)))
    assert torch.allclose(table[1 + 4 * 2 + 3, 8], torch.tensor(math.sin(3.0)))  # the column half
    assert len({tuple(r.tolist()) for r in table[1:]}) == 16  # every patch has its own code


def test_learning_rate_schedule():
    assert lr_at(0, 100, 1.0, 10) == 0.1 and lr_at(9, 100, 1.0, 10) == 1.0
    assert lr_at(10, 100, 1.0, 10) == 1.0 and abs(lr_at(55, 100, 1.0, 10) - 0.5) < 1e-12
    assert lr_at(100, 100, 1.0, 10) == 0.0 and lr_at(500, 100, 1.0, 10) == 0.0


def test_export_loads_back_and_inputs_match_the_eval_transform(tmp_path):
    model = build_model(seed=0)
    again = build_model(seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    export_local_dir(model, tmp_path / "m", extra={"steps": 0})
    loaded, preprocess, tokenizer = load_model(tmp_path / "m")
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    x = images_to_tensor([image])
    assert torch.allclose(x[0], preprocess(Image.fromarray(image)), atol=1e-5)
    with torch.no_grad():
        half = model.half().float()  # the export stores float16 weights
        assert torch.allclose(loaded.encode_image(x), half.encode_image(x), atol=1e-4)
        tokens = tokenizer(["a red circle"])
        assert torch.allclose(loaded.encode_text(tokens), half.encode_text(tokens), atol=1e-4)
