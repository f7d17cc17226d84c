"""No silent wrong results (issue 12): each test here returned plausible, wrong numbers (or dropped data
without a word) before the fix."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
from conftest import assert_refused, tiny_clip
from PIL import Image

from vit_lens_clip import HookedViT
from vit_lens_clip.app.run_folder import ReportFolder
from vit_lens_clip.datasets.folder import ImageFolder, TensorImages
from vit_lens_clip.decompose.parts import decompose
from vit_lens_clip.decompose.reducers import MeanReducer, Reducer, run_reducers
from vit_lens_clip.decompose.store import StoredParts
from vit_lens_clip.decompose.store_writer import ShardWriter
from vit_lens_clip.embedded import EMBEDDED_MODEL_DIR as EMBEDDED_DIR
from vit_lens_clip.errors import BadInputError, CorruptFileError, OutputFolderError, RunFolderMismatchError, UserInputError
from vit_lens_clip.loading import load_clip
from vit_lens_clip.methods.ablation import ablate_posthoc, mean_ablation_hooks
from vit_lens_clip.methods.retrieval import head_representation
from vit_lens_clip.methods.spatial.heatmaps import text_heatmap
from vit_lens_clip.methods.textspan.runs import collect_head_contributions
from vit_lens_clip.validation import text_embeddings


@pytest.fixture(scope="module")
def tiny():
    model = HookedViT.from_open_clip(tiny_clip(seed=7))  # 3 layers, 4 heads
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return model, images


# ------------------------------------------------------------------ 1. run folders know their data
def test_reused_folder_with_other_images_of_the_same_count_is_refused(tiny, tmp_path):
    model, images = tiny
    kw = dict(last_n_layers=2, batch_size=3, out_dir=tmp_path / "run", progress=False)
    first = collect_head_contributions(model, images, **kw)
    again = collect_head_contributions(model, images.clone(), **kw)  # same content: re-read
    assert torch.equal(first.heads, again.heads)
    with pytest.raises(RunFolderMismatchError, match=r"data\.sha256.*delete the folder"):
        collect_head_contributions(model, images.flip(0), **kw)  # same count, other images


class _KillAfter(Reducer):
    def __init__(self, batches):
        self.batches, self.seen = batches, 0

    def update(self, parts, batch):
        self.seen += 1
        if self.seen > self.batches:
            raise KeyboardInterrupt


def test_killed_run_is_not_resumed_onto_other_data(tiny, tmp_path):
    model, images = tiny
    kw = dict(batch_size=2, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=1, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_reducers(model, TensorImages(images), [MeanReducer(), _KillAfter(1)], **kw)
    with pytest.raises(RunFolderMismatchError, match="data"):
        run_reducers(model, TensorImages(images + 1), [MeanReducer(), _KillAfter(99)], **kw)
    other_model = HookedViT.from_open_clip(tiny_clip(seed=8))
    with pytest.raises(RunFolderMismatchError, match="model_weights_sha256"):
        run_reducers(other_model, TensorImages(images), [MeanReducer(), _KillAfter(99)], **kw)


def test_image_folder_identity_follows_files(tmp_path):
    for i in range(3):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
    ident = lambda: ImageFolder(tmp_path, lambda im: im).identity()  # noqa: E731
    before = ident()
    assert ident() == before
    Image.new("RGB", (8, 8), (0, 99, 0)).save(tmp_path / "1.png")  # same name and count, new content
    os.utime(tmp_path / "1.png", ns=(1, 1))
    assert ident() != before


# ------------------------------------------------------------------ 3. indices never wrap
def test_out_of_range_layer_and_head_indices_raise(tiny):
    model, images = tiny
    for bad in ([99], [-4], [3]):
        with pytest.raises(ValueError, match="out of range"):
            decompose(model, images[:1], layers=bad)
    assert decompose(model, images[:1], layers=[-1]).layers == [2]
    parts = decompose(model, images[:2], layers=[1, 2])
    means = {k: v.mean(0) for k, v in parts.__dict__.items() if k in ("embed", "attns", "mlps", "heads")}
    with pytest.raises(ValueError, match="out of range"):
        ablate_posthoc(parts, means, attn_layers=[5])
    with pytest.raises(ValueError, match="out of range"):
        ablate_posthoc(parts, means, heads=[(2, 4)])
    with pytest.raises(ValueError, match="out of range"):
        ablate_posthoc(parts, means, heads=[(-4, 0)])
    with pytest.raises(ValueError, match="out of range"):
        mean_ablation_hooks({"blocks.1.attn.hook_result": torch.zeros(17, 4, 64)}, heads=[(1, 4)])
    with pytest.raises(ValueError, match="out of range"):
        head_representation(parts.heads, [1, 2], [(5, 0)], n_layers=3)
    with pytest.raises(ValueError, match="out of range"):
        text_heatmap(model, images[:1], torch.randn(1, model.cfg.output_dim), layers=[7])
    with pytest.raises(ValueError, match="out of range"):
        run_reducers(model, TensorImages(images), [MeanReducer()], layers=[9], progress=False)


# ------------------------------------------------------------------ 5. corrupted data never loads silently
def _nan_into_safetensors(path: Path) -> None:
    """Overwrite the first 4 data bytes of a safetensors file with a float32 NaN bit pattern."""
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    raw[8 + n : 8 + n + 4] = struct.pack("<I", 0x7FC00000)
    path.write_bytes(bytes(raw))


def test_nan_bits_or_truncation_in_a_shard_are_errors_naming_the_file(tiny, tmp_path):
    model, images = tiny
    stack = ShardWriter(tmp_path / "heads", shard_size=2)
    run_reducers(model, TensorImages(images), [stack], batch_size=2, layers=[2], progress=False)
    StoredParts(stack.result()).read()
    shard = tmp_path / "heads" / "shard_00001.safetensors"
    good = shard.read_bytes()
    _nan_into_safetensors(shard)
    with pytest.raises(CorruptFileError, match="shard_00001.safetensors"):
        StoredParts(tmp_path / "heads").read()
    shard.write_bytes(good[:-10])
    with pytest.raises(CorruptFileError, match="shard_00001.safetensors"):
        StoredParts(tmp_path / "heads").read()


def test_nan_bits_in_a_checkpoint_state_are_an_error(tiny, tmp_path):
    model, images = tiny
    kw = dict(batch_size=2, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=1, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_reducers(model, TensorImages(images), [MeanReducer(), _KillAfter(2)], **kw)
    (state,) = (tmp_path / "ckpt").glob("state-*.safetensors")
    _nan_into_safetensors(state)
    with pytest.raises(CorruptFileError, match=state.name):
        run_reducers(model, TensorImages(images), [MeanReducer(), _KillAfter(99)], **kw)


def test_shipped_model_checksum_and_non_finite_weights(tmp_path):
    config = json.loads((EMBEDDED_DIR / "open_clip_config.json").read_text())
    assert len(config["weights_sha256"]) == 64
    damaged = tmp_path / "damaged"
    shutil.copytree(EMBEDDED_DIR, damaged)
    _nan_into_safetensors(damaged / "open_clip_model.safetensors")
    with pytest.raises(CorruptFileError, match="sha256"):
        load_clip(f"local-dir:{damaged}")
    # without a recorded checksum the NaN still cannot pass: non-finite weights are an error
    del config["weights_sha256"]
    (damaged / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(CorruptFileError, match="non-finite"):
        load_clip(f"local-dir:{damaged}")
    # a truncated weights file names the file
    weights = damaged / "open_clip_model.safetensors"
    weights.write_bytes((EMBEDDED_DIR / "open_clip_model.safetensors").read_bytes()[:-100])
    with pytest.raises(CorruptFileError, match="truncated"):
        load_clip(f"local-dir:{damaged}")


def test_nan_image_warns_with_its_index_and_leaves_the_rest_valid(tiny):
    model, images = tiny
    x = images[:4].clone()
    clean = model(x)
    x[2, 1, 5, 5] = float("inf")
    with pytest.warns(RuntimeWarning, match=r"batch indices 2\)"):
        out = model(x)
    assert torch.isfinite(out[[0, 1, 3]]).all() and torch.equal(out[[0, 1, 3]], clean[[0, 1, 3]])


# ------------------------------------------------------------------ 8. raw pixels are refused
def test_uint8_images_raise(tiny):
    model, images = tiny
    raw = (images[:1].clamp(-1, 1) * 127 + 128).to(torch.uint8)
    message = ("images have dtype torch.uint8: raw pixels are not model inputs; pass each PIL image through the "
               "model's preprocess (loaded.preprocess) to get normalised float tensors")
    assert_refused(lambda: model(raw), message, BadInputError)
    assert_refused(lambda: decompose(model, raw), message, BadInputError)


# ------------------------------------------------------------------ 6. dropped inputs are reported
def test_unlabelled_root_images_are_listed_as_skipped(tiny, tmp_path):
    model, _ = tiny
    (tmp_path / "cat").mkdir()
    for name in ("cat/a.png", "cat/b.png", "stray.png"):
        Image.new("RGB", (32, 32), (9, 9, 9)).save(tmp_path / name)
    data = ImageFolder(tmp_path, lambda im: torch.zeros(3, 32, 32), labelled=True)
    summary = run_reducers(model, data, [MeanReducer()], progress=False)
    assert summary.images == 2 and [s[0] for s in summary.skipped] == ["stray.png"]


def test_segment_folder_reports_an_image_without_a_mask(tmp_path, capsys):
    from vit_lens_clip.app.cli import build_parser
    from vit_lens_clip.app.segment import run_segment_command

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(2):
        Image.new("RGB", (64, 64), (200, 10, 10)).save(root / "images" / f"im{i}.png")
        Image.new("L", (64, 64), 255 * (i % 2)).save(root / "masks" / f"im{i}.png")
    Image.new("RGB", (64, 64)).save(root / "images" / "orphan.png")
    classes = tmp_path / "classes.txt"
    classes.write_text("circle\nsquare\n")
    args = build_parser().parse_args(["segment", "--dataset", "folder", str(root), "--classes", str(classes),
                                      "--templates", "simple", "--examples", "0", "--out", str(tmp_path / "out")])
    run_segment_command(args)
    printed = capsys.readouterr().out
    assert "skipped 1 input" in printed and "orphan.png" in printed
    listed = (tmp_path / "out" / "segmentation_skipped.csv").read_text()
    assert "orphan.png" in listed and "image without a mask" in listed
    assert "orphan.png" in (tmp_path / "out" / "segmentation.md").read_text()


# ------------------------------------------------------------------ 7. report folders never mix runs
def _report_run(out, settings, files, overwrite=False):
    folder = ReportFolder(out, settings, overwrite)
    folder.check()
    with folder:
        for name, text in files.items():
            (folder.staging / name).write_text(text)
            # until the commit the previous report is whole: nothing of this run is in the folder yet
            assert not (out / name).exists() or (out / name).read_text() != text
        folder.commit()


def _names(out):
    return sorted(p.name for p in out.iterdir() if not p.name.startswith(".vit_lens_clip"))


def test_report_folder_rules(tmp_path):
    out = tmp_path / "out"
    settings = {"k": 10, "texts": "descriptions"}
    _report_run(out, settings, {"report.html": "run 1", "textspan.json": "run 1"})
    (out / "my_notes.txt").write_text("mine")
    # same settings: accepted; the previous report stays readable until the new one is complete, then its files
    # are replaced and the ones this run did not write removed (none left stale); the user's file is kept
    _report_run(out, settings, {"report.html": "run 2"})  # this run writes no textspan.*
    assert _names(out) == ["my_notes.txt", "report.html"] and (out / "report.html").read_text() == "run 2"
    other = {"k": 5, "texts": "descriptions"}
    with pytest.raises(OutputFolderError, match="other settings"):
        _report_run(out, other, {"report.html": "run 3"})
    _report_run(out, other, {"report.html": "run 3"}, overwrite=True)
    assert _names(out) == ["my_notes.txt", "report.html"] and (out / "report.html").read_text() == "run 3"
    # a non-empty folder that never held a report is refused; a file is refused
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    with pytest.raises(OutputFolderError, match="not empty"):
        _report_run(foreign, settings, {"report.html": "run 1"})
    _report_run(foreign, settings, {"report.html": "run 1"}, overwrite=True)
    assert (foreign / "thesis.tex").read_text() == "x"
    with pytest.raises(OutputFolderError, match="is a file"):
        _report_run(foreign / "thesis.tex", settings, {})
    assert issubclass(OutputFolderError, UserInputError)


# ------------------------------------------------------------------ other silent-failure classes found in the sweep
def test_mismatched_labels_and_means_raise(tiny):
    model, images = tiny
    with pytest.raises(ValueError, match="labels"):
        TensorImages(images, labels=[0, 1])
    parts = decompose(model, images[:2], layers=[1, 2])
    other = decompose(model, images[2:4], layers=[2])  # means of other kept layers
    means = {k: getattr(other, k).mean(0) for k in ("embed", "attns", "mlps", "heads")}
    with pytest.raises(ValueError, match="other layers"):
        ablate_posthoc(parts, means, heads=[(2, 0)])


def test_damaged_text_cache_is_rebuilt(tmp_path):
    from vit_lens_clip.methods.textspan.pools import embed_texts_cached

    calls = []

    def encode(texts):
        calls.append(len(texts))
        return torch.nn.functional.normalize(torch.ones(len(texts), 4), dim=-1)

    first = embed_texts_cached(["a", "b"], encode, "m", cache_dir=tmp_path)
    (cached,) = tmp_path.glob("*.safetensors")
    _nan_into_safetensors(cached)
    again = embed_texts_cached(["a", "b"], encode, "m", cache_dir=tmp_path)
    assert len(calls) == 2 and torch.equal(first, again)


def test_weights_keys_cover_the_whole_file(tmp_path):
    from vit_lens_clip.convert.sources import file_digest as _file_digest

    head = bytes(5 << 20)
    (tmp_path / "a.bin").write_bytes(head + b"a")
    (tmp_path / "b.bin").write_bytes(head + b"b")  # same size, same first 5 MB: a fine-tune of the last layer
    assert _file_digest(tmp_path / "a.bin") != _file_digest(tmp_path / "b.bin")


# ------------------------------------------------------------------ texts: one coercion, one set of messages
def test_texts_are_coerced_in_one_place(tiny):
    model, images = tiny
    d = model.cfg.output_dim
    encode = lambda texts: torch.arange(len(texts) * d, dtype=torch.float32).reshape(len(texts), d)
    assert torch.equal(text_embeddings("a cat", d, encode), encode(["a cat"]))  # one string is one text
    assert torch.equal(text_embeddings(("a", "b"), d, encode), encode(["a", "b"]))
    one = torch.randn(d)
    assert torch.equal(text_embeddings(one, d), one[None])

    def refused(texts, message, encoder=None):
        with pytest.raises(BadInputError) as caught:
            text_embeddings(texts, d, encoder)
        assert str(caught.value) == message

    refused([], "texts must be a non-empty list of strings, got an empty list", encode)
    refused(["a"], "texts given as strings need a text encoder: load the model with vit_lens_clip.load_clip, "
                   f"or pass text embeddings [n_texts, {d}]")
    refused(torch.ones(2, d + 1), f"text embeddings must be [n_texts, {d}] (or one text [{d}]), got (2, {d + 1})")
    refused(["a", "b"], f"text embeddings must be [n_texts, {d}] (or one text [{d}]), got (2, {d + 1})",
            lambda texts: torch.ones(len(texts), d + 1))  # what an encoder gives is checked too
    refused(torch.ones(2, d, dtype=torch.long), "text embeddings must be floats, got dtype torch.int64")
    refused(torch.ones(0, d), "no texts: the text embeddings have 0 rows")
    bad = torch.ones(3, d)
    bad[1, 0], bad[2, 5] = float("nan"), float("inf")
    refused(bad, "text embeddings contain NaN or inf (rows 1, 2)")
    # an item that is not a string breaks the Sequence[str] annotation before the package's own check
    assert_refused(lambda: text_embeddings([3], d, encode),
                   "texts must be strings (or one tensor of text embeddings), got an item of type int", BadInputError)

    # every caller goes through it: the heatmap, the residual directions, the query embeddings, the text encoder
    for call in (lambda: text_heatmap(model, images[:1], bad),
                 lambda: model.tokens_to_residual_directions(bad),
                 lambda: model.set_text_vocab(["a", "b", "c"], bad)):
        with pytest.raises(BadInputError) as caught:
            call()
        assert str(caught.value) == "text embeddings contain NaN or inf (rows 1, 2)"
    with pytest.raises(BadInputError) as caught:
        model.tokens_to_residual_directions(["a cat"])  # no text encoder attached
    assert str(caught.value).startswith("texts given as strings need a text encoder")
    model.text_encoder = encode
    try:
        direction = model.tokens_to_residual_directions("a cat")
        assert direction.ndim == 1
        assert torch.equal(model.tokens_to_residual_directions(["a cat"])[0], direction)
    finally:
        model.text_encoder = None
