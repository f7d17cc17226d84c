"""The embedded model's trainer: the export loads through open_clip, a resumed run equals an uninterrupted one,
and the recipe knobs do what they say. Tiny runs (batch 8, a few steps) keep this fast."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors.torch import load_file

from vit_lens_clip import load_clip
from vit_lens_clip.embedded import train as trainer
from vit_lens_clip.embedded.arguments import parse_weights


def _run(out, steps, **kw):
    kw = {"batch_size": 8, "threads": 1, "log_every": 1000, **kw}
    return trainer.train(out, steps, **kw)


def test_export_loads_through_open_clip_local_dir(tmp_path):
    model = _run(tmp_path / "run", 2, seed=3)
    loaded = load_clip(f"local-dir:{tmp_path / 'run'}", device="cpu", keep_source=True)  # reads loaded.clip's tower
    config = json.loads((tmp_path / "run" / trainer.CONFIG_NAME).read_text())
    assert config["training"]["steps_done"] == 2 and config["training"]["seed"] == 3
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model.half().float().encode_image(image)  # the export is float16
        via_open_clip = loaded.clip.encode_image(image)
        via_port = loaded.model(image)
    torch.testing.assert_close(via_open_clip, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(via_port, expected, rtol=1e-5, atol=1e-5)


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    _run(tmp_path / "straight", 4, seed=1)
    _run(tmp_path / "resumed", 4, seed=1, stop_at=2)
    assert not (tmp_path / "resumed" / trainer.WEIGHTS_NAME).exists()  # stopped before exporting
    _run(tmp_path / "resumed", 4, seed=1)
    straight = load_file(str(tmp_path / "straight" / trainer.WEIGHTS_NAME))
    resumed = load_file(str(tmp_path / "resumed" / trainer.WEIGHTS_NAME))
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    _run(tmp_path / "other_seed", 4, seed=2)
    other = load_file(str(tmp_path / "other_seed" / trainer.WEIGHTS_NAME))
    assert not torch.equal(other["visual.conv1.weight"], straight["visual.conv1.weight"])


def test_sincos_start_has_the_requested_scale():
    width = trainer.MODEL_CFG["vision_cfg"]["width"]
    for scale in (1.0, 4.0):
        pos = trainer.build_model(0, sincos_init=True, pos_init_scale=scale).visual.positional_embedding
        assert torch.count_nonzero(pos[0]) == 0  # the class token's row
        assert pos[1:].std().item() == pytest.approx(scale * width ** -0.5, rel=1e-4)
    table = trainer.sincos_2d(8, width)
    assert table.shape == (65, width) and len({tuple(r.tolist()) for r in table[1:]}) == 64  # every patch distinct


def test_cli_parses_sweep_weights_and_rejects_bad_input(tmp_path):
    assert parse_weights("position=0.6, shape=0.3,count=0.1") == {"position": 0.6, "shape": 0.3, "count": 0.1}
    with pytest.raises(argparse.ArgumentTypeError):
        parse_weights("position:0.6")
    with pytest.raises(ValueError) as caught:  # the package's own check (the arguments fit the annotations)
        _run(tmp_path / "never", 0)
    assert str(caught.value) == "steps must be positive" and not (tmp_path / "never").exists()
