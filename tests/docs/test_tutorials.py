"""The tutorial notebooks in docs/tutorials (issue 16).

Fast: each notebook is stored without outputs, and equals its jupytext percent script (the ``.py`` is the source
of truth: edit it, then ``jupytext --sync docs/tutorials/*.py``). Slow: each notebook runs top to bottom in a
fresh kernel of this interpreter (nbclient and ipykernel's ``python3`` spec, which resolves to
``sys.executable``), writing into a temporary folder; any cell error fails with the cell's traceback.
"""
from __future__ import annotations

import time
from pathlib import Path

import jupytext  # the test extra installs it (and nbformat, nbclient, ipykernel): missing is a failure, not a skip
import nbformat
import pytest

TUTORIALS = Path(__file__).resolve().parents[2] / "docs" / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
EXPECTED = ["01_finetune_image_folder", "02_detection_coco", "03_depth_normals", "04_video", "05_cli_and_cluster"]


def cells(notebook) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


def test_every_tutorial_is_a_paired_notebook():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED
    assert sorted(p.stem for p in TUTORIALS.glob("*.py")) == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, f"{path.name} has no code cell"
    dirty = [i for i, cell in enumerate(code) if cell.outputs or cell.execution_count is not None]
    assert not dirty, f"{path.name}: code cells {dirty} hold outputs; strip them (jupytext --sync regenerates it)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_equals_its_jupytext_script(path):
    script = jupytext.read(path.with_suffix(".py"))
    notebook = nbformat.read(path, as_version=4)
    assert cells(notebook) == cells(script), (f"{path.name} differs from {path.with_suffix('.py').name}: run "
                                              f"`jupytext --sync {path.with_suffix('.py')}`")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("DENSECNN_TUTORIAL_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=1200, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    try:
        client.execute()  # raises CellExecutionError naming the cell and its traceback
    finally:
        nbformat.write(notebook, tmp_path / path.name)  # the executed notebook, outputs and all, to look at
    print(f"{path.stem}: {time.perf_counter() - start:.0f} s (executed copy: {tmp_path / path.name})")
    errors = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
              if o.output_type == "error"]
    assert not errors
    images = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
              if "image/png" in o.get("data", {})]
    assert images, f"{path.name} drew no figure"
