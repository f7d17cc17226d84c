"""Every demo notebook runs top to bottom (nbclient, kernel python3, fresh temp cwd) without an error, and each
committed notebook holds exactly the cells of its paired jupytext percent script (demos/NAME.py, the source that
ruff lints; `jupytext --sync demos/*.py` after editing one)."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
jupytext = pytest.importorskip("jupytext")

DEMOS = Path(__file__).resolve().parents[2] / "demos"
NOTEBOOKS = sorted(DEMOS.glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_matches_its_percent_script(path):
    script = path.with_suffix(".py")
    assert script.is_file(), f"{path.name} has no paired script: run jupytext --set-formats ipynb,py:percent {path}"
    notebook, source = jupytext.read(path), jupytext.read(script)
    assert notebook.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    cells = [(c.cell_type, c.source) for c in notebook.cells]
    assert cells == [(c.cell_type, c.source) for c in source.cells], (
        f"{path.name} and {script.name} differ: run jupytext --sync {script}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    # One BLAS/OpenMP thread in the kernel: on a small shared machine, oversubscribed threads made these
    # notebooks 4x slower (measured 120 s vs 30 s for 03 with the other core busy).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    nb = nbformat.read(path, as_version=4)
    assert any(cell.cell_type == "code" for cell in nb.cells)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
              if out.get("output_type") == "error"]
    assert not errors, errors
    executed = [cell.get("execution_count") for cell in nb.cells if cell.cell_type == "code"]
    assert all(count is not None for count in executed), "some code cells did not run"
