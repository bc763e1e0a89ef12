"""The notebooks in docs/ run from top to bottom (offline), so they never go stale."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "docs" / "notebooks"

OFFLINE_CELL = """
import socket as _socket
_connect = _socket.socket.connect
def _offline_connect(sock, address):
    host = address[0] if isinstance(address, tuple) else address
    if sock.family in (_socket.AF_INET, _socket.AF_INET6) and not (str(host).startswith("127.") or host in ("::1", "localhost")):
        raise OSError(f"the notebook runs offline, but it connects to {address}")
    return _connect(sock, address)
_socket.socket.connect = _offline_connect
"""


@pytest.mark.slow  # starts a Jupyter kernel and trains for an epoch: 20-60 s on a shared 2-core CPU
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit the notebook without outputs"
    # everything the notebook writes goes to a temporary folder of this test
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # offline: any connection to another machine fails in the kernel (a cell run before the
    # notebook's own, not saved), and so does any HTTP client that honours the proxy variables
    nb.cells.insert(0, nbformat.v4.new_code_cell(OFFLINE_CELL))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
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
