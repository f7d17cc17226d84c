"""``vit-lens-clip neurons`` on the embedded model: collect, describe, errors (small sizes)."""

from __future__ import annotations

import json

from safetensors.torch import load_file

from vit_lens_clip.app.cli import main


def test_neurons_collect_and_describe(tmp_path, capsys):
    pool = tmp_path / "pool.txt"
    pool.write_text("\n".join(["a red circle", "a blue square", "on grass", "on water", "a star", "the sky", "snow",
                               "sand", "two objects", "a small shape", "a large shape", "in the corner"]))
    out = tmp_path / "out"
    assert main(["neurons", "collect", "--layers", "3", "4", "--n-reference", "24", "--quiet", "--out", str(out)]) == 0
    stats = load_file(str(out / "second_order_L3.safetensors"))
    assert stats["s"].shape == (24, 2, 4, 512)  # [images, later layers, heads, neurons]
    assert main(["neurons", "describe", "--layers", "4", "--n-reference", "60", "--n-eval", "30", "--pools", str(pool),
                 "--n-texts", "3", "--quiet", "--out", str(out)]) == 0
    numbers = json.loads((out / "results.json").read_text())
    layer = numbers["layers"]["4"]
    assert 0 <= layer["selectivity_mean"] <= 1 and 0 <= layer["variance_explained_pooled"] <= 1
    assert set(k for k in layer if k.startswith("acc_")) == {f"acc_{s}" for s in
                                                               ("baseline", "all", "significant", "insignificant", "rank1",
                                                                "text")}
    assert all(len(texts) == 3 for texts in numbers["neurons"].values())
    assert "texts" in capsys.readouterr().out


def test_neurons_rejects_the_last_layer(tmp_path, capsys):
    assert main(["neurons", "ablate", "--layers", "5", "--quiet", "--out", str(tmp_path)]) == 2
    assert "last layer" in capsys.readouterr().err
