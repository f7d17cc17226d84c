"""app/report.py: ``run_report`` with every optional section left out still writes the page, results.json (with
provenance and each left-out section's reason) and results.csv, records the folder's files, and a second run with
other settings is refused instead of mixing two reports."""

import csv
import json

import pytest

from vit_lens_clip.app.config import SECTION_NAMES, ReportConfig
from vit_lens_clip.app.report import run_report
from vit_lens_clip.app.run_folder import RECORD
from vit_lens_clip.errors import OutputFolderError


def test_minimal_report(tmp_path, capsys):
    out = tmp_path / "r"
    config = ReportConfig(out=out, n_images=4, batch_size=4, skip=SECTION_NAMES, quiet=True)
    folder = run_report(config, command_line=["vit-lens-clip", "report", "--n-images", "4"])
    assert folder == out
    numbers = json.loads((out / "results.json").read_text())
    assert numbers["skipped_sections"] == {name: "--skip" for name in SECTION_NAMES}
    assert numbers["provenance"]["command"] == "vit-lens-clip report --n-images 4"
    assert "report.html" in json.loads((out / RECORD).read_text())["files"]
    assert "<html" in (out / "report.html").read_text().lower()
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(set(row) >= {"section", "metric", "value"} for row in rows)
    with pytest.raises(OutputFolderError, match="other settings"):
        run_report(ReportConfig(out=out, n_images=5, batch_size=4, skip=SECTION_NAMES, quiet=True))
