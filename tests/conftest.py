import os

import pytest
import torch

# Two cores: keep intra-op threads small so parallel test workers do not thrash.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def image_folder(tmp_path):
    from bagnet.testing import make_image_folder

    return make_image_folder(tmp_path / "data")
