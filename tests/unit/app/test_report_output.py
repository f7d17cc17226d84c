"""app/report_output.py: ``record`` adds one results.csv row (section, metric, value, then any extra columns) and
nothing else; outputs share no state."""

from vit_lens_clip.app.report_output import ReportOutput


def test_record_adds_one_csv_row_in_order():
    out = ReportOutput()
    out.record("ablation", "top1", 0.5, layer=3)
    out.record("spurious", "worst", 0.1)
    assert out.csv_rows == [{"section": "ablation", "metric": "top1", "value": 0.5, "layer": 3},
                            {"section": "spurious", "metric": "worst", "value": 0.1}]
    assert list(out.csv_rows[0]) == ["section", "metric", "value", "layer"]
    assert out.numbers == {} and out.page == []  # numbers and page parts are the sections' own to set
    fresh = ReportOutput()
    assert fresh.csv_rows == [] and fresh.csv_rows is not out.csv_rows
