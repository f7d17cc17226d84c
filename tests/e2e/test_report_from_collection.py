"""``vit-lens-clip report --from DIR``: the report of a collection folder equals the report computed from the
model and the same shapes-world images (TextSpan picks identical, numbers to 1e-6); sections that need images
are skipped with a printed reason recorded in results.json; a folder without the ablation parts says which
``collect --parts`` would give them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from vit_lens_clip.app.cli import main

N, BATCH, K = 24, 8, 4
IMAGE_SECTIONS = ("heatmaps", "segmentation", "spurious", "attention", "neurons", "sae")
POOL = [f"{c} {s}" for c in ("a red", "a blue", "a green", "a small", "a large", "two", "a yellow", "three",
                              "a purple", "one") for s in
        ("circle", "square", "triangle", "star", "shape on grass", "bird", "shape on water")]  # 70 >= completeness' k


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pool") / "pool.txt"
    path.write_text("\n".join(POOL))
    return path


def _collect(out: Path, parts: str) -> Path:
    assert main(["collect", "--data", f"shapes:{N}", "--out", str(out), "--parts", parts, "--batch-size", str(BATCH),
                 "--quiet"]) == 0
    return out


def _report(out: Path, pool: Path, *extra: str) -> dict:
    assert main(["report", "--out", str(out), "--batch-size", str(BATCH), "--texts", str(pool), "--k", str(K),
                 "--quiet", *extra]) == 0
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def reports(tmp_path_factory, pool_file):
    root = tmp_path_factory.mktemp("from")
    folder = _collect(root / "collection", "heads,embed,layers,mlps,means")
    direct = _report(root / "direct", pool_file, "--n-images", str(N), "--skip", *IMAGE_SECTIONS)
    from_folder = _report(root / "from", pool_file, "--from", str(folder))
    return direct, from_folder, root


def _close(a, b, path: str = "") -> None:
    """Equal structure; floats within 1e-6 relative (of the larger magnitude) or 1e-7 absolute."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7), (path, a, b)
    else:
        assert a == b, (path, a, b)


def test_report_from_folder_equals_report_from_model_and_images(reports):
    direct, from_folder, _ = reports
    for key in ("model", "zero_shot", "ablation", "textspan", "head_search", "completeness"):
        assert key in direct and key in from_folder, key
        _close(direct[key], from_folder[key], key)
    picks = lambda r: {(h["layer"], h["head_index"]): [p["index"] for p in h["picks"]] for h in r["textspan"]["heads"]}
    assert picks(direct) == picks(from_folder) and len(picks(direct)) == 16  # identical picks, 4 layers x 4 heads
    assert from_folder["collection"]["n"] == N and from_folder["collection"]["parts"][:2] == ["heads", "embed"]


def test_image_sections_are_skipped_with_their_reason(reports, capsys):
    _, from_folder, root = reports
    skipped = from_folder["skipped_sections"]
    assert set(IMAGE_SECTIONS) | {"decomposition"} <= set(skipped)
    assert all("which holds no images" in skipped[name] for name in IMAGE_SECTIONS)
    assert "ablation" not in skipped and "textspan" not in skipped and "completeness" not in skipped
    # the folder names its model: another --model is refused in one line
    assert main(["report", "--out", str(root / "other"), "--from", str(root / "collection"), "--model", "ViT-B-32"]) == 2
    err = capsys.readouterr().err
    assert "drop --model" in err and err.count("\n") == 1
    # so are settings the folder decides: its layers and its images
    for flag, value, message in (("--last-layers", "2", "holds the last 4 layers; drop --last-layers 2"),
                                 ("--n-images", "10", "drop --n-images")):
        assert main(["report", "--out", str(root / "other"), "--from", str(root / "collection"), flag, value]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_folder_without_ablation_parts_names_the_collect_parts(tmp_path, pool_file, capsys):
    folder = _collect(tmp_path / "c", "heads,embed,means")
    numbers = _report(tmp_path / "r", pool_file, "--from", str(folder), "--skip", "completeness")
    reason = numbers["skipped_sections"]["ablation"]
    assert "lacks parts ['layers', 'mlps']" in reason and "--parts heads,embed,layers,mlps,means" in reason
    assert f"[report] ablation skipped: {reason}" in capsys.readouterr().out
    assert "textspan" in numbers and numbers["zero_shot"]


def test_report_from_bad_folders_is_one_line(tmp_path, capsys):
    assert main(["report", "--out", str(tmp_path / "r"), "--from", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "not a collection folder" in err and err.count("\n") == 1
    (tmp_path / "imgs").mkdir()
    assert main(["report", "--out", str(tmp_path / "r"), "--from", str(tmp_path), "--images", str(tmp_path / "imgs")]) == 2
    assert "drop --images" in capsys.readouterr().err


def test_labelled_folder_that_changed_since_collection_is_refused(tmp_path, pool_file, capsys):
    """The class names of a labelled:PATH collection come from PATH's sub-folders; if PATH changed, they may no
    longer match the stored labels, so the report refuses instead of naming classes wrongly."""
    root = tmp_path / "images"
    for c, colour in (("red_things", (255, 0, 0)), ("blue_things", (0, 0, 255))):
        (root / c).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40, 40), colour).save(root / c / f"{i}.png")
    folder = tmp_path / "c"
    assert main(["collect", "--data", f"labelled:{root}", "--out", str(folder), "--parts", "heads,embed,means",
                 "--batch-size", "4", "--quiet"]) == 0
    numbers = _report(tmp_path / "r", pool_file, "--from", str(folder), "--skip", "completeness")
    assert set(numbers["zero_shot"]) == {"classes"} and 0.0 <= numbers["zero_shot"]["classes"] <= 1.0
    Image.new("RGB", (40, 40), (0, 255, 0)).save(root / "red_things" / "2.png")
    assert main(["report", "--out", str(tmp_path / "r2"), "--from", str(folder), "--texts", str(pool_file)]) == 2
    err = capsys.readouterr().err
    assert "changed since it was collected" in err and err.count("\n") == 1


def test_unlabelled_folder_lists_the_sections_it_cannot_run(tmp_path, pool_file):
    """An unlabelled collection has no zero-shot task: zero-shot and completeness are skipped, each with its
    reason, in results.json and on the page (with the provenance)."""
    root = tmp_path / "images"
    root.mkdir()
    for i, colour in enumerate(((255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 0))):
        Image.new("RGB", (40, 40), colour).save(root / f"{i}.png")
    folder = tmp_path / "c"
    assert main(["collect", "--data", f"folder:{root}", "--out", str(folder), "--parts", "heads,embed,means",
                 "--batch-size", "4", "--quiet"]) == 0
    numbers = _report(tmp_path / "r", pool_file, "--from", str(folder))
    skipped = numbers["skipped_sections"]
    for name in ("zero_shot", "completeness"):
        assert "has no class names; pass --classes FILE" in skipped[name], (name, skipped[name])
    assert "zero_shot" not in numbers and "textspan" in numbers
    page = (tmp_path / "r" / "report.html").read_text()
    assert "Skipped sections" in page and "has no class names" in page
    provenance = numbers["provenance"]
    assert provenance["command"].startswith("vit-lens-clip report") and "--from" in provenance["command"]
    assert len(provenance["model"]["weights_sha256"]) == 64 and provenance["device"] == "cpu"
    assert provenance["model"]["weights_sha256"] in page
