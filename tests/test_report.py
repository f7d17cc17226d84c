"""The main job end to end on the embedded model: files, numbers, and the page drawn by a headless browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

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
