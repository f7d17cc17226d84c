"""convert/sources.py: devices, precisions, whole-file digests and batched unit text embeddings (no hub)."""

import pytest
import torch
from conftest import tiny_clip

from vit_lens_clip.convert.sources import (
    PRECISIONS,
    encode_texts,
    file_digest,
    precision_name,
    resolve_device,
)
from vit_lens_clip.errors import NoTextTowerError


def test_resolve_device_and_precision_names():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device(None) == torch.device("cpu") and resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
    assert precision_name(None) == "fp32"
    for name, dtype in PRECISIONS.items():
        assert precision_name(dtype) == name and precision_name(name) == name
    with pytest.raises(ValueError, match="dtype must be one of"):
        precision_name(torch.int8)


def test_file_digest_reads_the_whole_file(tmp_path):
    head = b"x" * (3 << 20)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_bytes(head + b"1")
    b.write_bytes(head + b"2")
    c.write_bytes(head + b"1")
    assert file_digest(a) != file_digest(b)  # same first megabytes, different files
    assert file_digest(a) == file_digest(c)


def test_encode_texts_batches_to_unit_vectors_and_refuses_image_only_models():
    clip = tiny_clip()

    def tokenizer(texts):
        return torch.stack([torch.tensor([1 + len(t)] * 15 + [49407]) for t in texts])

    texts = ["a", "bb", "ccc", "dddd", "eeeee"]
    one_batch = encode_texts(clip, tokenizer, texts, torch.device("cpu"))
    small_batches = encode_texts(clip, tokenizer, texts, torch.device("cpu"), batch_size=2)
    assert one_batch.shape == (5, 48)
    assert torch.allclose(one_batch.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert torch.allclose(one_batch, small_batches, atol=1e-6)
    assert torch.allclose(encode_texts(clip, tokenizer, "ccc", torch.device("cpu"))[0], one_batch[2], atol=1e-6)
    with pytest.raises(NoTextTowerError, match="image-only"):
        encode_texts(clip, None, texts, torch.device("cpu"), name="m")


def test_a_local_dir_tokenizer_folder_uses_the_folders_text_settings(tmp_path):
    """``tokenizer_from_folder`` reads a ``local-dir:`` model's text_cfg from its own open_clip_config.json (its
    context length), not open_clip's defaults (77)."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from vit_lens_clip.convert.sources import tokenizer_from_folder

    model = tmp_path / "model"
    model.mkdir()
    (model / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"text_cfg": {"context_length": 9}}}))
    tok = Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2, "cat": 3}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(str(tmp_path / "tok"))
    tokens = tokenizer_from_folder(f"local-dir:{model}", str(tmp_path / "tok"))(["cat cat"])
    assert tokens.shape == (1, 9) and tokens[0, :2].tolist() == [3, 3]
    assert tokenizer_from_folder("ViT-B-16", str(tmp_path / "tok"))(["cat"]).shape == (1, 77)


def test_random_weights_get_values_where_open_clip_leaves_memory_empty():
    """CoCa's text_decoder.text_projection is torch.empty in open_clip (garbage, NaN now and then); a random-weight
    load fills it, so the finite-weights check never blames a checkpoint that does not exist."""
    import warnings

    import open_clip
    import torch

    from vit_lens_clip.convert.sources import initialise_left_empty
    from vit_lens_clip.integrity import check_finite_weights

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coca = open_clip.CoCa(embed_dim=16, vision_cfg=dict(image_size=16, patch_size=8, width=32, layers=1, head_width=16),
                              text_cfg=dict(context_length=8, vocab_size=64, width=16, heads=2, layers=1),
                              multimodal_cfg=dict(context_length=8, width=16, heads=2, layers=1, vocab_size=64))
    coca.text_decoder.text_projection.data.fill_(float("nan"))  # what the garbage sometimes is
    others = {k: v.clone() for k, v in coca.state_dict().items() if not k.endswith("text_decoder.text_projection")}
    initialise_left_empty(coca)
    assert torch.isfinite(coca.text_decoder.text_projection).all() and coca.text_decoder.text_projection.std() > 0
    assert all(torch.equal(coca.state_dict()[k], v) for k, v in others.items())  # nothing else touched
    check_finite_weights(coca, "random")
