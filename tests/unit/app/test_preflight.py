"""Arguments checked before torch is imported (app/preflight.py): ranges, devices, model names, output folders."""

import argparse

import pytest

from vit_lens_clip.app import preflight
from vit_lens_clip.errors import BadInputError, OutputFolderError, UnknownModelError


def test_numbers_out_of_range_are_one_line_errors():
    with pytest.raises(BadInputError, match="--batch-size must be at least 1; got 0"):
        preflight.check_numbers("collect", argparse.Namespace(batch_size=0))
    with pytest.raises(BadInputError, match="--seed must not be negative"):
        preflight.check_numbers("report", argparse.Namespace(seed=-1))
    with pytest.raises(BadInputError, match=r"--bird-fraction must lie in \[0, 1\]"):
        preflight.check_numbers("train-embedded", argparse.Namespace(bird_fraction=1.5))
    preflight.check_numbers("collect", argparse.Namespace(batch_size=4, seed=0, workers=0))


def test_devices(monkeypatch):
    preflight.check_device("cpu")
    with pytest.raises(BadInputError, match="is not a device"):
        preflight.check_device("bogus")
    monkeypatch.setattr(preflight, "cuda_device_count", lambda: 0)
    with pytest.raises(BadInputError, match="no CUDA GPU"):
        preflight.check_device("cuda")
    monkeypatch.setattr(preflight, "cuda_device_count", lambda: 1)
    preflight.check_device("cuda:0")
    with pytest.raises(BadInputError, match="has 1 CUDA GPU"):
        preflight.check_device("cuda:1")


def test_model_names_with_a_suggestion():
    preflight.check_model_name("ViT-B-16")
    with pytest.raises(UnknownModelError, match="ViT-B-16"):
        preflight.check_model_name("ViT-B/16")


def test_output_folders_are_probed_not_created(tmp_path):
    target = tmp_path / "new" / "deeper"
    preflight.check_out_folder(str(target))
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == []  # nothing left behind
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputFolderError, match="is a file"):
        preflight.check_out_folder(str(a_file))
    with pytest.raises(OutputFolderError, match="not a folder"):
        preflight.check_out_folder(str(a_file / "sub"))


def test_sae_folders_need_a_config(tmp_path):
    preflight.check_sae_folder(None)
    with pytest.raises(FileNotFoundError, match="--sae .*: no such folder"):
        preflight.check_sae_folder(str(tmp_path / "missing"))
    with pytest.raises(BadInputError, match="holds no cfg.json or config.json"):
        preflight.check_sae_folder(str(tmp_path))
    (tmp_path / "cfg.json").write_text("{}")
    preflight.check_sae_folder(str(tmp_path))


def test_tokenizer_folders(tmp_path):
    preflight.check_tokenizer_folder(None)
    with pytest.raises(FileNotFoundError, match="--tokenizer .*: no such tokenizer folder"):
        preflight.check_tokenizer_folder(str(tmp_path / "missing"))
    with pytest.raises(BadInputError, match="holds no tokenizer"):
        preflight.check_tokenizer_folder(str(tmp_path))
    (tmp_path / "tokenizer_config.json").write_text("{}")
    preflight.check_tokenizer_folder(str(tmp_path), "ViT-B-16-SigLIP")
    preflight.check_tokenizer_folder(str(tmp_path), "local-dir:/somewhere")
    with pytest.raises(BadInputError, match="--tokenizer is for open_clip models; timm:vit_small"):
        preflight.check_tokenizer_folder(str(tmp_path), "timm:vit_small_patch16_224")
    args = argparse.Namespace(command="hooks", model="ViT-B-16-SigLIP", pretrained=None, device="cpu", random=False,
                              tokenizer=str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no such tokenizer folder"):
        preflight.check_arguments(args)


def test_a_config_added_after_a_first_check_is_known(tmp_path):
    """A Python caller may register an open_clip config at any time: the names are never cached once open_clip is
    loaded (a cached list made a later-registered architecture 'unknown')."""
    import json

    import open_clip

    preflight.check_model_name("ViT-B-16")
    (tmp_path / "preflight-late-arch.json").write_text(json.dumps(
        {"embed_dim": 8, "vision_cfg": {"image_size": 16, "layers": 1, "width": 16, "patch_size": 8},
         "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 8, "heads": 1, "layers": 1}}))
    open_clip.add_model_config(tmp_path / "preflight-late-arch.json")
    preflight.check_model_name("preflight-late-arch")
