"""The main job end to end on the embedded model: files, numbers, and the page drawn by a headless browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from PIL import Image

from vit_lens_clip.app.cli import main

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    code = main(["report", "--out", str(out), "--n-images", "160", "--segmentation-images", "24",
                 "--spurious-images", "96", "--quiet"])
    assert code == 0
    return out


def test_report_files_and_numbers(report_dir):
    for name in ("report.html", "results.json", "results.csv", "textspan.json", "textspan.md", "textspan.html"):
        assert (report_dir / name).stat().st_size > 0, name
    numbers = json.loads((report_dir / "results.json").read_text())
    assert set(numbers) >= {"model", "zero_shot", "ablation", "textspan", "completeness", "segmentation", "spurious", "neurons"}
    assert numbers["zero_shot"]["colour"] > 0.5  # a trained model, far above 1/7 chance
    assert all(0 <= v["selectivity_mean"] <= 1 for v in numbers["neurons"]["layers"].values())
    seg = numbers["segmentation"]
    assert set(seg) == {"decomposition", "raw_attention", "rollout", "gradcam", "chefer"}
    assert all(0 <= m["miou"] <= 1 for m in seg.values())
    rows = {r["setting"] for r in numbers["spurious"]["rows"]}
    assert any(s.startswith("baseline") for s in rows) and any("random" in s for s in rows)
    html = (report_dir / "report.html").read_text()
    assert re.search(r"<script[^>]*\bsrc\s*=", html) is None  # every script is inlined: works offline


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")
def test_report_renders_offline_in_headless_browser(report_dir, tmp_path):
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path}", "--virtual-time-budget=15000", "--dump-dom",
        (report_dir / "report.html").as_uri(),
    ]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False).stdout
    assert dom.count("main-svg") >= 10, "plotly did not draw the report's figures"
    assert "Zero-shot segmentation" in dom and "TextSpan" in dom


def test_report_errors_are_clear(tmp_path, capsys):
    assert main(["report", "--out", str(tmp_path), "--images", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", "--out", str(tmp_path / "out"), "--images", str(empty)]) == 2
    assert "no images" in capsys.readouterr().err
    assert main(["report", "--out", str(tmp_path), "--model", "ViT-B-32", "--pretrained", "/nope.safetensors"]) == 2


def _image_folder(root, classes: dict[str, tuple[int, int, int]] | None, n: int = 3):
    """``n`` flat-colour images per class (sub-folders), or ``n`` unlabelled images (``classes`` None)."""
    for name, colour in (classes or {"": (200, 60, 30)}).items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (48, 48), tuple((c + 40 * i) % 256 for c in colour)).save(folder / f"{i}.png")
    return root


def test_report_on_image_folders_names_what_each_number_measures(tmp_path):
    skip = ["textspan", "segmentation", "spurious", "neurons", "sae", "attention"]
    labelled = _image_folder(tmp_path / "labelled", {"red square": (220, 20, 20), "blue square": (20, 20, 220)})
    out = tmp_path / "labelled_report"
    assert main(["report", "--out", str(out), "--images", str(labelled), "--quiet", "--skip", *skip]) == 0
    numbers = json.loads((out / "results.json").read_text())
    page = (out / "report.html").read_text()
    assert set(numbers["zero_shot"]) == {"classes"} and "top-1 accuracy (against the labels)" in page
    assert re.search(r"Heatmaps, image 0 \(classes: predicted (red|blue) square, true (red|blue) square\)", page)
    assert "left out with --skip" in page and set(numbers["skipped_sections"]) == {*skip, "completeness"}  # no TextSpan

    unlabelled = _image_folder(tmp_path / "unlabelled", None)
    classes = tmp_path / "classes.txt"
    classes.write_text("red square\nblue square\n")
    out = tmp_path / "unlabelled_report"
    assert main(["report", "--out", str(out), "--images", str(unlabelled), "--classes", str(classes), "--quiet",
                 "--skip", *skip]) == 0
    numbers = json.loads((out / "results.json").read_text())
    page = (out / "report.html").read_text()
    assert "zero_shot" not in numbers and "no image has a class label" in numbers["skipped_sections"]["zero_shot"]
    assert "agreement with the unablated model" in page and "true unlabelled" in page
    assert numbers["ablation"]["classes"]["baseline"] == 1.0  # the unablated model agrees with itself
    rows = (out / "results.csv").read_text()
    assert "classes.attn.agreement" in rows and "classes.attn.top1" not in rows
