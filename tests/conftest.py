import os

# Before torch loads: idle OpenMP threads sleep instead of spinning. On a 2-core machine
# shared with other jobs, spinning threads made small forward passes 5-40x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

# The suite runs tiny models: a second intra-op thread buys nothing and costs contention.
torch.set_num_threads(1)


@pytest.fixture
def image_folder(tmp_path):
    from bagnet.testing import make_image_folder

    return make_image_folder(tmp_path / "data")


@pytest.fixture(autouse=True)
def _own_torch_hub(tmp_path_factory, monkeypatch):
    """Every test sees an empty torch hub cache of its own, never the user's: nothing a test
    loads comes from what this machine downloaded (the default model depends on it)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch-home")))
