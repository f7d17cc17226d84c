"""SigLIP's tokenizer comes from the model hub: offline it fails at once in one line that says how to give a local
one, and a local tokenizer folder makes the text tower usable offline (random weights, no network)."""

import time

import pytest
import torch

from vit_lens_clip.convert import offline
from vit_lens_clip.errors import UserInputError, WeightsUnavailableError
from vit_lens_clip.loading import load_clip


@pytest.fixture
def hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline._hub_unreachable.cache_clear()


def _local_tokenizer(folder):
    """A tiny Hugging Face tokenizer written to ``folder``, as AutoTokenizer.save_pretrained writes one."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "photo": 4, "of": 5, "cat": 6, "dog": 7}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(str(folder))
    return folder


def test_offline_hub_tokenizer_fails_at_once_in_one_line(hub_offline):
    loaded = load_clip("ViT-B-16-SigLIP")
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as refused:
        loaded.encode_text(["a photo of a cat"])
    assert time.perf_counter() - start < 5
    message = str(refused.value)
    assert isinstance(refused.value, UserInputError) and "\n" not in message and "tokenizer=" in message


def test_a_local_tokenizer_folder_encodes_text_offline(hub_offline, tmp_path):
    folder = _local_tokenizer(tmp_path / "tokenizer")
    loaded = load_clip("ViT-B-16-SigLIP", tokenizer=str(folder))
    texts = loaded.encode_text(["a photo of a cat", "a dog", "a photo of a cat"])
    assert texts.shape == (3, loaded.model.cfg.output_dim)
    assert torch.allclose(texts.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(texts[0], texts[2]) and not torch.allclose(texts[0], texts[1], atol=1e-3)
    tokens = loaded.tokenizer(["a photo of a cat"])
    assert tokens[0, :5].tolist() == [3, 4, 5, 3, 6]  # the folder's vocabulary, not the hub's
    with pytest.raises(FileNotFoundError, match="tokenizer folder not found"):
        load_clip("ViT-B-16-SigLIP", tokenizer=str(tmp_path / "missing")).encode_text(["a cat"])


def test_commands_that_need_text_fail_before_building_the_model(hub_offline, tmp_path, capsys):
    from vit_lens_clip.app.cli import main

    for argv in (["hooks", "--model", "ViT-B-16-SigLIP", "--text"],
                 ["report", "--model", "ViT-B-16-SigLIP", "--out", str(tmp_path / "report")]):
        start = time.perf_counter()
        assert main(argv) == 2
        assert time.perf_counter() - start < 5  # no model is built (that alone takes seconds)
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "tokenizer=" in err
    assert not (tmp_path / "report").exists()


def test_the_cache_key_names_the_tokenizer(hub_offline, tmp_path):
    """Text embeddings are cached under the model's key: another tokenizer must never read them back."""
    first = _local_tokenizer(tmp_path / "one")
    second = tmp_path / "two"
    _local_tokenizer(second)
    (second / "tokenizer_config.json").write_text((second / "tokenizer_config.json").read_text().replace("}", ', "x": 1}', 1))
    def key(tokenizer):
        torch.manual_seed(0)  # random weights: the same ones each time, so that only the tokenizer differs
        return load_clip("ViT-B-16-SigLIP", tokenizer=tokenizer).key

    from vit_lens_clip.convert.sources import tokenizer_key

    keys = [key(str(folder)) for folder in (first, second)]  # two full-size loads (about 4 s each)
    assert keys[0] != keys[1]
    # the model's key is its own key plus the tokenizer's part: the same folder (its files) gives the same key,
    # and the model's own tokenizer (none given) the bare key, which neither folder's key equals
    parts = [tokenizer_key(str(folder)) for folder in (first, second)]
    assert parts[0] == tokenizer_key(str(first)) and tokenizer_key(None) == ""
    assert all(k.endswith(p) and p for k, p in zip(keys, parts, strict=True))
    assert keys[0][:-len(parts[0])] == keys[1][:-len(parts[1])] not in keys
