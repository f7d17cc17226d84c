"""Old import paths of moved modules still work, warn once, and give the very same module object."""

import importlib.util
import subprocess
import sys

from vit_lens_clip._moved import MOVED, new_name

OLD_NAMES = [
    ("vit_lens_clip.textspan", "text_span"),
    ("vit_lens_clip.spatial.heatmaps", "text_heatmap"),
    ("vit_lens_clip.spatial.evaluate", "evaluate_segmentation"),
    ("vit_lens_clip.spurious", "run_spurious"),
    ("vit_lens_clip.ablation", "ablate_posthoc"),
    ("vit_lens_clip.zeroshot", "build_classifier"),
    ("vit_lens_clip.retrieval", None),
    ("vit_lens_clip.report", "run_report"),
    ("vit_lens_clip.cli", "main"),
]


def test_new_name_maps_packages_and_their_submodules():
    assert new_name("vit_lens_clip.spatial.heatmaps") == "vit_lens_clip.methods.spatial.heatmaps"
    assert new_name("vit_lens_clip.cli") == "vit_lens_clip.app.cli"
    assert new_name("vit_lens_clip.spatialx") is None
    assert new_name("vit_lens_clip.methods.spatial") is None


def test_old_paths_are_the_new_modules_and_warn():
    """One fresh interpreter (each old name warns only on its first import)."""
    code = f"""
import importlib, warnings
warnings.simplefilter("always")
for old, new, attribute in {[(old, new_name(old), attribute) for old, attribute in OLD_NAMES]!r}:
    with warnings.catch_warnings(record=True) as caught:
        module = importlib.import_module(old)
    assert module is importlib.import_module(new), (old, new)
    messages = [str(w.message) for w in caught if w.category is DeprecationWarning]
    assert any(old + " moved to " + new in m for m in messages), (old, messages)
    assert attribute is None or callable(getattr(module, attribute)), (old, attribute)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr


def test_every_moved_target_exists():
    for old, new in MOVED.items():
        assert importlib.util.find_spec(new) is not None, (old, new)


def test_old_cli_module_runs_with_python_dash_m():
    result = subprocess.run(
        [sys.executable, "-m", "vit_lens_clip.cli", "--help"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert "usage: vit-lens-clip" in result.stdout
