"""The README's code examples run as written (offline, in a temporary folder)."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(title: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start : end if end > 0 else None], flags=re.DOTALL)


@pytest.mark.slow  # exports the shipped model to ONNX: 20-60 s on a shared 2-core CPU
def test_use_with_section_examples_run(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import bagnet

    monkeypatch.chdir(tmp_path)
    blocks = _blocks("Use with timm / the Hub / ONNX / notebooks")
    assert len(blocks) == 4
    ns: dict = {}
    reference = bagnet.create_model("bagnet17_slim", pretrained="imagenette").eval()

    exec(blocks[0], ns)
    assert ns["config"]["input_size"] == (3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(ns["logits"], reference(ns["pixels"]))

    exec(blocks[1], ns)
    assert (tmp_path / "bagnet17-imagenette" / "model.safetensors").is_file()
    for k, v in reference.state_dict().items():
        assert torch.equal(ns["same"].state_dict()[k], v), k
    assert ns["same"].pretrained_cfg["classes"] == reference.pretrained_cfg["classes"]

    exec(blocks[2], ns)
    x = torch.from_numpy((ns["image"] - ns["mean"]) / ns["std"])[None]
    with torch.no_grad():
        expected = reference(x).numpy()
    assert np.abs(ns["logits"] - expected).max() < 1e-4 * np.abs(expected).max()
    assert ns["patch_logits"].shape == (1, 10, (112 - 17) // 8 + 1, (150 - 17) // 8 + 1)

    exec(blocks[3], ns)
    assert ns["evidence"].shape == ns["gradients"].shape == ns["x"].shape
    assert float(ns["delta"].abs().max()) < 1e-4
