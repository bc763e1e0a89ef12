"""The clip defence's squashing: the model's own training squashing if it has one, else the
setting docs/ROBUSTNESS.md recommends for the shipped models, tanh(1 * x - 2); explicit
values win, and the certificate says which it used and why."""

import math

import pytest
import torch

from bagnet import create_model
from bagnet.robust import RobustBagNet, certify, clip_squashing
from bagnet.train.config import describe_clip_evidence, parse_train_evidence


def _model(**cfg):
    model = create_model("bagnet_tiny", num_classes=3).eval()
    model.pretrained_cfg = {**model.pretrained_cfg, **cfg}
    return model


def _trained(a, b):
    """The record `bagnet train --clip-evidence A,B` leaves in the model file."""
    return _model(train_evidence=describe_clip_evidence([a, b]), config={"clip_evidence": [a, b]})


@pytest.mark.parametrize("values", [[1.0, -2.0], [0.7, -0.3], [0.05, 1.0], [2.5e-05, 0.0], [3.0, -1e6]])
def test_train_evidence_text_reads_back(values):
    assert parse_train_evidence(describe_clip_evidence(values)) == pytest.approx(values, rel=1e-5)


def test_train_evidence_text_spellings_and_refusals():
    assert parse_train_evidence("mean") is None
    assert parse_train_evidence(" clip  tanh( 0.5*x-1 ) ") == [0.5, -1.0]
    assert parse_train_evidence("clip tanh(2 * x + -3)") == [2.0, -3.0]
    for text in ("median", "clip tanh(x - 2)", "clip tanh(0 * x - 2)", "clip tanh(nan * x - 2)", "tanh(1 * x - 2)"):
        with pytest.raises(ValueError, match="neither 'mean' nor 'clip tanh"):
            parse_train_evidence(text)


def test_a_plain_model_gets_the_recommended_squashing():
    for model in (_model(), _model(train_evidence="mean", config={"clip_evidence": None})):
        got = clip_squashing(model)
        assert (got.scale, got.shift) == (1.0, -2.0) and str(got) == "tanh(1 * x - 2)"
        assert "docs/ROBUSTNESS.md" in got.source
        robust = RobustBagNet(model, 8, "clip")
        x = torch.linspace(-6, 6, 25, dtype=torch.float64)
        want = torch.tensor([math.tanh(v - 2) for v in x.tolist()], dtype=torch.float64)
        torch.testing.assert_close(robust.squash(x), want, rtol=0, atol=1e-15)
        assert robust.squashing == "tanh(1 * x - 2)" and "docs/ROBUSTNESS.md" in robust.squashing_source


def test_a_clip_trained_model_gets_its_own_squashing_and_explicit_values_win():
    model = _trained(0.5, -1.0)
    got = clip_squashing(model)
    assert (got.scale, got.shift) == (0.5, -1.0) and "training squashing" in got.source
    # only the text (older files): read from it
    text_only = _model(train_evidence="clip tanh(0.25 * x + 0.5)")
    assert (clip_squashing(text_only).scale, clip_squashing(text_only).shift) == (0.25, 0.5)
    assert clip_squashing(model, 0.05, -1.0) == type(got)(0.05, -1.0, "given")
    half = clip_squashing(model, tanh_scale=2.0)
    assert (half.scale, half.shift) == (2.0, -1.0) and half.source.startswith("scale given; shift from the model's")
    # the squashing reaches the certificate, and certify's keyword arguments still win
    x = torch.randn(2, 3, 40, 40)
    cert = certify(model, x, patch_size=8, defense="clip")
    assert cert.squashing == "tanh(0.5 * x - 1)" and "training squashing" in cert.squashing_source
    assert certify(model, x, patch_size=8, defense="clip", tanh_scale=1.0, tanh_shift=-2.0).squashing == \
        "tanh(1 * x - 2)"
    with torch.no_grad():
        evidence = model.patch_logits(x).double()
    by_hand = torch.tanh(0.5 * evidence - 1.0).mean((2, 3))
    assert torch.equal(cert.prediction, by_hand.argmax(1))
    assert certify(model, x, patch_size=8, defense="mask").squashing is None


def test_unreadable_or_contradictory_records_are_refused():
    with pytest.raises(ValueError, match="contradicts itself"):
        clip_squashing(_model(train_evidence="clip tanh(1 * x - 2)", config={"clip_evidence": [0.5, -2.0]}))
    with pytest.raises(ValueError, match="contradicts itself"):
        clip_squashing(_model(train_evidence="mean", config={"clip_evidence": [1.0, -2.0]}))
    with pytest.raises(ValueError, match="config.clip_evidence cannot be read"):
        clip_squashing(_model(config={"clip_evidence": ["a", 1]}))
    with pytest.raises(ValueError, match="neither 'mean'"):
        RobustBagNet(_model(train_evidence="median"), 8, "clip")
    # explicit values need no record, and the other defences never read it
    assert clip_squashing(_model(train_evidence="median"), 1.0, -2.0).source == "given"
    RobustBagNet(_model(train_evidence="median"), 8, "mask")
    with pytest.raises(ValueError, match="finite"):
        clip_squashing(_model(), math.inf, 0.0)
    with pytest.raises(ValueError, match="clip_range replaces the tanh squashing"):
        RobustBagNet(_model(), 8, "clip", clip_range=(0.0, 3.0), tanh_scale=1.0)
    clamped = RobustBagNet(_model(), 8, "clip", clip_range=(0.0, 3.0))
    assert clamped.squashing == "clamp to [0, 3]" and clamped.squashing_source == "given"
