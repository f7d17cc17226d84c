"""app/sae.py: the SAE report section on a few shapes scenes (the embedded model and its shipped SAE) records
its numbers, one page part per explained feature plus the overview, and CSV rows with AUROCs in [0, 1]."""

from vit_lens_clip.app.report_output import ReportOutput
from vit_lens_clip.app.sae import add_sae_features
from vit_lens_clip.datasets.shapes_adapters import sample_scenes
from vit_lens_clip.loading import load_clip


def test_sae_section_outputs():
    out = ReportOutput()
    add_sae_features(out, load_clip(), sample_scenes(6, seed=1), n_features=2, n_top_images=2, ablation_images=4,
                     segmentation_images=2, batch_size=6, progress=False)
    assert "sae" in out.numbers
    titles = [title for title, _ in out.page]
    assert titles[0].startswith("SAE features") and sum(t.startswith("SAE feature ") for t in titles) >= 2
    aurocs = [r["value"] for r in out.csv_rows if r["section"] == "sae" and r["metric"].endswith(".auroc")]
    assert len(aurocs) == 2 and all(0 <= a <= 1 for a in aurocs)
