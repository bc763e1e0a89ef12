import pytest
import torch

from bagnet.testing import make_image_folder
from bagnet.train import TrainConfig


def make_train_val(root, train_per_class: int):
    """3 classes of 40 px images: ``train_per_class`` train and 4 val images each."""
    make_image_folder(root, per_class=train_per_class, size=40, splits=("train",))
    make_image_folder(root, per_class=4, size=40, splits=("val",), seed=1)
    return root


@pytest.fixture(scope="package")
def tiny_data(tmp_path_factory):
    """8 train / 4 val images per class (read-only: tests copy it to change it)."""
    return make_train_val(tmp_path_factory.mktemp("tiny"), 8)


def tiny_config(data, out, **overrides) -> TrainConfig:
    """A run that takes about a second per epoch with bagnet_tiny at 32 px."""
    cfg = dict(
        data=str(data), out=str(out), model="bagnet_tiny", img_size=32, epochs=3, batch_size=6, lr=0.2,
        warmup_epochs=1, label_smoothing=0.1, workers=0, deterministic=True, progress=False, device="cpu",
    )
    cfg.update(overrides)
    return TrainConfig(**cfg)


def load_last(out):
    return torch.load(f"{out}/last.pt", map_location="cpu", weights_only=True)


def assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(autouse=True)
def _restore_global_torch_state():
    """One thread; and deterministic runs switch torch's global flags and seeds: give them back."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    rng = torch.get_rng_state()
    threads = torch.get_num_threads()
    # Tiny models gain nothing from a second thread, and on a busy 2-core machine the
    # threads' spin-waiting makes every step many times slower.
    torch.set_num_threads(1)
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.set_rng_state(rng)
    torch.set_num_threads(threads)
