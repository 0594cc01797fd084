"""examples/quickstart.ipynb runs top to bottom (outputs are stripped in the repository)."""

import pathlib

import nbclient
import nbformat

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_runs_and_draws_its_figure():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), "strip the outputs"
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3", cwd=str(NOTEBOOK.parent)).execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
