"""bagnet calibrate: the threshold it writes, checked against scores computed by explain()."""

import json
import math

import numpy as np
import pytest
import torch

import bagnet
from bagnet.cli.main import main
from bagnet.explain import explain, familiarity
from bagnet.testing import make_image_folder
from bagnet.testing.models import randomize_batchnorm


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cal")
    known = make_image_folder(root / "known", per_class=6, splits=("val",), seed=1) / "val"
    unknown = root / "unknown"
    rng = np.random.default_rng(5)
    from PIL import Image

    for i in range(10):  # other-class images of varied sizes, some in sub-folders
        d = unknown / ("a" if i % 2 else "b")
        d.mkdir(parents=True, exist_ok=True)
        h, w = rng.integers(30, 60, 2)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"{i}.png")
    torch.manual_seed(0)
    model = randomize_batchnorm(bagnet.create_model("bagnet_tiny", num_classes=3))
    with torch.no_grad():
        model.fc.weight.normal_(0, 1.0)
    weights = bagnet.save_model_file(root / "m.pt", model, {"classes": ["circle", "square", "stripes"], "img_size": 32})
    return root, known, unknown, weights


def _split(n, seed):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[: n // 2]), sorted(order[n // 2 :])


def test_threshold_flags_the_asked_share_of_the_fit_half(setup, capsys):
    root, known, unknown, weights = setup
    out = root / "flagged.pt"
    code = main(["calibrate", "--data", str(known), "--unknown", str(unknown), "--weights", str(weights),
                 "--method", "max_logit", "--cost", "0.25", "--workers", "0", "--out", str(out),
                 "--json", str(root / "cal.json")])
    assert code == 0
    text = capsys.readouterr().out
    assert "familiarity score: max_logit" in text and "held out" in text
    model = bagnet.load_model(out)
    setting = model.pretrained_cfg["unknown"]
    assert setting["method"] == "max_logit"
    # Scores the way a user meets them: explain() on each file.
    paths = sorted(p for p in known.rglob("*.png"))
    scores = np.array([float(explain(model, p, k=1).logits.max()) for p in paths])
    fit, test = _split(len(paths), 0)
    flagged_fit = int((scores[fit] < setting["threshold"]).sum())
    assert flagged_fit == math.ceil(0.25 * len(fit))
    assert setting["held_out"]["cost"] == pytest.approx(float(np.mean(scores[test] < setting["threshold"])))
    # the flag reaches explain() of the written file
    flags = [explain(model, p, k=1).unknown.flag for p in paths]
    assert flags == [bool(s < setting["threshold"]) for s in scores]
    report = json.loads((root / "cal.json").read_text())
    assert report["chosen"] == "max_logit" and set(report["candidates"]) == {"max_logit"}


def test_auto_picks_the_score_that_catches_most_on_the_fit_half(setup, capsys):
    root, known, unknown, weights = setup
    out = root / "auto.pt"
    assert main(["calibrate", "--data", str(known), "--unknown", str(unknown), "--weights", str(weights),
                 "--workers", "0", "--out", str(out), "--json", str(root / "auto.json")]) == 0
    report = json.loads((root / "auto.json").read_text())
    caught = {m: c["fit"]["caught"] for m, c in report["candidates"].items()}
    assert set(caught) == {"max_softmax", "max_logit", "energy"}
    assert caught[report["chosen"]] == max(caught.values())
    model = bagnet.load_model(weights)
    x = [explain(model, p, k=1).logits for p in sorted(unknown.rglob("*.png"))]
    u_fit, _ = _split(len(x), 1)
    s = familiarity(torch.stack(x), report["chosen"]).numpy()
    assert report["candidates"][report["chosen"]]["fit"]["caught"] == pytest.approx(
        float(np.mean(s[u_fit] < report["setting"]["threshold"])))


@pytest.mark.parametrize("args, words", [
    (["--cost", "1.5"], "--cost must lie strictly between 0 and 1"),
    (["--unknown", "NOPE"], "does not exist"),
    (["--out", "x.json"], "should be a .pt model file"),
])
def test_bad_input_is_one_line(setup, capsys, args, words):
    root, known, unknown, weights = setup
    base = {"--data": str(known), "--unknown": str(unknown), "--weights": str(weights), "--out": str(root / "o.pt")}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    code = main(["calibrate", *[x for kv in base.items() for x in kv]])
    err = capsys.readouterr().err
    assert code != 0 and words in err and "Traceback" not in err


def test_separate_test_sets_choose_on_one_and_measure_on_the_other(setup, tmp_path, capsys):
    """--test-data/--test-unknown: the threshold is chosen on all of --data (no halves) and
    measured on the test sets only, checked against scores from explain()."""
    _root, known, unknown, weights = setup
    test_known = make_image_folder(tmp_path / "tk", per_class=4, splits=("val",), seed=7) / "val"
    out = tmp_path / "m.pt"
    assert main(["calibrate", "--data", str(known), "--unknown", str(unknown), "--test-data", str(test_known),
                 "--test-unknown", str(unknown / "a"), "--weights", str(weights), "--method", "max_logit",
                 "--cost", "0.25", "--workers", "0", "--out", str(out)]) == 1
    assert "both in the sets" in capsys.readouterr().err  # the test images overlap the fit ones
    assert main(["calibrate", "--data", str(known), "--unknown", str(unknown / "b"), "--test-data", str(test_known),
                 "--test-unknown", str(unknown / "a"), "--weights", str(weights), "--method", "max_logit",
                 "--cost", "0.25", "--workers", "0", "--out", str(out)]) == 0
    assert "test sets" in capsys.readouterr().out
    model = bagnet.load_model(out)
    setting = model.pretrained_cfg["unknown"]

    def scores(folder):
        return np.array([float(explain(model, p, k=1).logits.max()) for p in sorted(folder.rglob("*.png"))])

    fit = scores(known)
    assert int((fit < setting["threshold"]).sum()) == math.ceil(0.25 * len(fit))  # all of --data, no halves
    assert setting["held_out"]["cost"] == pytest.approx(float(np.mean(scores(test_known) < setting["threshold"])))
    assert setting["held_out"]["caught"] == pytest.approx(float(np.mean(scores(unknown / "a") < setting["threshold"])))
    assert setting["test_known_data"].endswith("val") and "whole image" in setting["preprocessing"]
    assert main(["calibrate", "--data", str(known), "--unknown", str(unknown), "--test-data", str(test_known),
                 "--weights", str(weights), "--out", str(out)]) == 1
    assert "go together" in capsys.readouterr().err
