"""`bagnet train --clip-evidence A,B`: training through the clip defence's logits,
mean over locations of tanh(A * patch logit + B), checked against a computation by hand."""

import json
import math

import pytest
import torch

import bagnet
from bagnet.cli.main import main
from bagnet.data.folder import ImageFolder, eval_transform
from bagnet.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from bagnet.train import train
from bagnet.train.evidence import ClippedEvidence

from .conftest import tiny_config

A, B = 0.7, -0.3


def _naive_loss(patch_logits: torch.Tensor, targets: torch.Tensor, a: float, b: float) -> float:
    """Cross-entropy of the mean of tanh(a * x + b), written out with python floats."""
    n, c, h, w = patch_logits.shape
    total = 0.0
    for i in range(n):
        logits = [sum(math.tanh(a * float(patch_logits[i, k, y, x]) + b) for y in range(h) for x in range(w)) / (h * w)
                  for k in range(c)]
        total += math.log(sum(math.exp(v) for v in logits)) - logits[int(targets[i])]
    return total / n


def test_training_loss_is_cross_entropy_of_the_mean_squashed_patch_logits():
    torch.manual_seed(0)
    model = bagnet.create_model("bagnet_tiny", num_classes=4).eval()
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 3, 1])
    with torch.no_grad():
        patches = model.patch_logits(x)
        # the patch logits are the model's evidence: their plain mean is its logits
        torch.testing.assert_close(patches.mean((2, 3)), model(x), rtol=1e-4, atol=1e-5)
        loss = torch.nn.CrossEntropyLoss()(ClippedEvidence(model, A, B)(x), y)
    assert float(loss) == pytest.approx(_naive_loss(patches, y, A, B), rel=1e-5)
    # and it is another loss than the plain model's (the option does something)
    with torch.no_grad():
        plain = torch.nn.CrossEntropyLoss()(model(x), y)
    assert float(loss) != pytest.approx(float(plain), rel=1e-3)


@pytest.fixture(scope="module")
def clipped_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("clip") / "r"
    train(tiny_config(tiny_data, out, epochs=1, label_smoothing=0.0, clip_evidence=[A, B], command="bagnet train ..."))
    return out


def test_a_run_validates_through_the_clipped_logits_and_records_them(clipped_run, tiny_data):
    assert json.loads((clipped_run / "config.json").read_text())["clip_evidence"] == [A, B]
    model = bagnet.load_model(clipped_run / "model.pt").eval()
    assert model.pretrained_cfg["train_evidence"] == "clip tanh(0.7 * x - 0.3)"
    assert model.pretrained_cfg["metrics"]["logits"] == "clip tanh(0.7 * x - 0.3)"
    assert model.pretrained_cfg["config"]["clip_evidence"] == [A, B]
    # the logged val loss is the naive loss of the saved weights on the val images
    val = ImageFolder(tiny_data / "val", transform=eval_transform(32, IMAGENET_MEAN, IMAGENET_STD))
    x = torch.stack([val[i][0] for i in range(len(val))])
    y = torch.tensor([val[i][1] for i in range(len(val))])
    with torch.no_grad():
        naive = _naive_loss(model.patch_logits(x), y, A, B)
    log = json.loads((clipped_run / "log.jsonl").read_text().splitlines()[-1])
    assert log["val_loss"] == pytest.approx(naive, rel=1e-4)


def test_certify_says_how_the_model_was_trained(clipped_run, tiny_data, tmp_path, capsys):
    assert main(["certify", "--data", str(tiny_data), "--weights", str(clipped_run / "model.pt"), "--patch", "8",
                 "--defense", "clip", "--tanh-scale", str(A), "--tanh-shift", str(B), "--workers", "0",
                 "--device", "cpu", "--out", str(tmp_path / "c")]) == 0
    assert "; trained on the mean of clip tanh(0.7 * x - 0.3)" in capsys.readouterr().out.splitlines()[0]


def test_a_plain_run_says_it_averaged_the_plain_logits(tiny_data, tmp_path):
    train(tiny_config(tiny_data, tmp_path / "r", epochs=1))
    cfg = bagnet.load_model(tmp_path / "r" / "model.pt").pretrained_cfg
    assert cfg["train_evidence"] == "mean" and "logits" not in cfg["metrics"]


@pytest.mark.parametrize("value,message", [
    ("1,x", "--clip-evidence '1,x' must be two numbers A,B"),
    ("1", "--clip-evidence '1' must be two numbers A,B"),
    ("1,2,3", "--clip-evidence '1,2,3' must be two numbers A,B"),
    ("0,1", "--clip-evidence scale A must be positive, got 0"),
    ("nan,1", "--clip-evidence must be two finite numbers"),
])
def test_bad_values_are_one_line_errors(tiny_data, tmp_path, capsys, value, message):
    assert main(["train", "--data", str(tiny_data), "--model", "bagnet_tiny", "--out", str(tmp_path / "r"),
                 "--device", "cpu", "--clip-evidence", value]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def _args(data, out):
    return ["train", "--data", str(data), "--model", "bagnet_tiny", "--img-size", "32", "--epochs", "2",
            "--batch-size", "6", "--workers", "0", "--device", "cpu", "--no-progress", "--out", str(out)]


def test_resume_keeps_the_runs_aggregation_and_refuses_another(tiny_data, tmp_path, capsys):
    clip, plain = tmp_path / "clip", tmp_path / "plain"
    assert main([*_args(tiny_data, clip), "--clip-evidence", "1,-2", "--stop-after", "1"]) == 0
    assert main([*_args(tiny_data, plain), "--stop-after", "1"]) == 0
    capsys.readouterr()
    for out, typed, message in [
        (clip, "2,-2", "cannot change --clip-evidence [2.0, -2.0] (run has [1.0, -2.0])"),
        (plain, "1,-2", "cannot change --clip-evidence [1.0, -2.0] (run has None)"),
    ]:
        before = (out / "last.pt").read_bytes()
        assert main(["train", "--out", str(out), "--resume", "--clip-evidence", typed]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
        assert (out / "last.pt").read_bytes() == before
    # the same value typed again (spelled otherwise), or none: the run goes on as it began
    assert main(["train", "--out", str(clip), "--resume", "--clip-evidence", "1.0, -2"]) == 0
    assert [json.loads(r)["epoch"] for r in (clip / "log.jsonl").read_text().splitlines()] == [1, 2]
    assert bagnet.load_model(clip / "model.pt").pretrained_cfg["config"]["clip_evidence"] == [1.0, -2.0]


def test_the_gradient_steps_go_through_the_clipped_logits(tiny_data, tmp_path, monkeypatch):
    import bagnet.train.loop as loop

    modes = []

    class Spy(ClippedEvidence):
        def forward(self, x):
            modes.append(torch.is_grad_enabled() and self.defense.model.training)
            return super().forward(x)

    monkeypatch.setattr(loop, "ClippedEvidence", Spy)
    train(tiny_config(tiny_data, tmp_path / "r", epochs=1, clip_evidence=[A, B]))
    # 24 train images in batches of 6 with gradients, then the 12 val images without
    assert modes == [True] * 4 + [False] * 2
