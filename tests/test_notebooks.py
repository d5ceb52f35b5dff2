"""The notebooks in notebooks/ run top to bottom on a phantom cohort (as a user would run them)."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def notebook_data(tmp_path_factory) -> Path:
    """One data folder for all notebooks: the first makes the cohort and store, the rest reuse."""
    return tmp_path_factory.mktemp("notebook-data")


def test_the_three_notebooks_are_there():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03"]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, notebook_data, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("NOTEBOOK_DATA", str(notebook_data))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(notebook_data)}},
    )
    client.execute()  # raises CellExecutionError naming the cell on any error
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code)
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors
    figures = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert figures, f"{path.name} drew no figure"
