"""Every demo notebook runs top to bottom (nbclient, kernel python3, fresh temp cwd) without an error, and the
committed notebooks are exactly what demos/make_notebooks.py generates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

DEMOS = Path(__file__).resolve().parents[1] / "demos"
NOTEBOOKS = sorted(DEMOS.glob("*.ipynb"))
# Notebooks paired with a jupytext percent-format source (demos/NAME.py) are checked against it instead.
PAIRED = sorted(p for p in DEMOS.glob("*.py") if p.name != "make_notebooks.py" and p.with_suffix(".ipynb").exists())


def _generator():
    spec = importlib.util.spec_from_file_location("make_notebooks", DEMOS / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebooks_match_their_generator():
    generator = _generator()
    generated = [p for p in NOTEBOOKS if p.with_suffix(".py") not in PAIRED]
    assert sorted(p.name for p in generated) == sorted(generator.NOTEBOOKS)
    for path in generated:
        assert path.read_text(encoding="utf-8") == generator.render(path.name), (
            f"{path.name} is out of date: run python demos/make_notebooks.py")


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


@pytest.mark.parametrize("source", PAIRED, ids=lambda p: p.stem)
def test_paired_notebooks_match_their_source(source):
    jupytext = pytest.importorskip("jupytext")
    cells = lambda nb: [(c.cell_type, c.source) for c in nb.cells]  # noqa: E731
    assert cells(nbformat.read(source.with_suffix(".ipynb"), as_version=4)) == cells(jupytext.read(source)), (
        f"{source.with_suffix('.ipynb').name} is out of date: run jupytext --to ipynb {source.name}")
