"""The notebooks in docs/ run from top to bottom (offline), so they never go stale."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "docs" / "notebooks"


@pytest.mark.slow  # starts a Jupyter kernel and trains for an epoch: 20-60 s on a shared 2-core CPU
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit the notebook without outputs"
    # everything the notebook writes goes to a temporary folder of this test
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and traceback, if a cell fails

    results = [o for c in code for o in c.outputs if o.output_type == "execute_result"]
    # the two explanations render as HTML with their figure inlined
    html = [o.data["text/html"] for o in results if "text/html" in o.data]
    assert len(html) == 2 and all("data:image/png;base64," in h for h in html)
    printed = "".join(o.get("text", "") for c in code for o in c.outputs if o.output_type == "stream")
    assert "evidence" in printed and "val_top1" in printed
    assert any(tmp_path.glob("bagnet-quickstart-*/run/model/model.safetensors")), "the run wrote its model"
