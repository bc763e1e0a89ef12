"""RobustBagNet and certify: against naive loop implementations of PatchGuard's masking and
Clipped BagNet, and brute-force soundness (worst-case evidence at every patch position)."""

import itertools
import math

import pytest
import torch

import bagnet
from bagnet import create_model
from bagnet.robust import RobustBagNet, affected_locations, certify
from bagnet.testing.models import randomize_batchnorm

DEFENCES = [("mask", {}), ("clip", {}), ("clip", {"clip_range": (-0.5, 2.0)})]


def _tiny(seed=0, classes=4):
    torch.manual_seed(seed)
    model = randomize_batchnorm(create_model("bagnet_tiny", num_classes=classes), seed)
    with torch.no_grad():
        model.fc.bias.zero_()  # no class wins on its bias alone: certificates vary per image
        model.fc.weight.mul_(20)
    return model


def _naive_defended(e, defense, window, bounds=None, squash=None):
    """Defended logits of one image's evidence [C, h, w] by loops over windows."""
    c, h, w = e.shape
    wh, ww = min(window[0], h), min(window[1], w)
    e = squash(e)
    out = []
    for k in range(c):
        total = e[k].sum().item()
        if defense == "mask":
            total -= max(e[k, r:r + wh, s:s + ww].sum().item() for r in range(h - wh + 1) for s in range(w - ww + 1))
        out.append(total / (h * w))
    return torch.tensor(out, dtype=torch.float64)


def _naive_margin(e, pred, defense, window, bounds, squash):
    """PatchGuard's Algorithm 2 / Clipped BagNet's bound written out window by window."""
    c, h, w = e.shape
    wh, ww = min(window[0], h), min(window[1], w)
    e = squash(e)
    worst = math.inf
    for r, s in itertools.product(range(h - wh + 1), range(w - ww + 1)):
        inside = torch.zeros(h, w, dtype=torch.bool)
        inside[r:r + wh, s:s + ww] = True
        outside = [e[k][~inside].sum().item() for k in range(c)]
        if defense == "clip":
            lower = outside[pred] + wh * ww * bounds[0]
            upper = max(outside[k] + wh * ww * bounds[1] for k in range(c) if k != pred)
        else:
            left = e[pred].clone()
            left[inside] = 0
            lower = outside[pred] - max(left[a:a + wh, b:b + ww].sum().item()
                                        for a in range(h - wh + 1) for b in range(w - ww + 1))
            upper = max(outside[k] for k in range(c) if k != pred)
        worst = min(worst, lower - upper)
    return worst / (h * w)


@pytest.mark.parametrize("defense,kwargs", DEFENCES)
def test_defended_logits_and_margins_match_naive_loops(defense, kwargs):
    model = _tiny()
    x = torch.randn(3, 3, 48, 40)
    robust = RobustBagNet(model, 10, defense, **kwargs).eval()
    window = affected_locations(model, (48, 40), 10).window
    with torch.no_grad():
        evidence = model.patch_logits(x).double()
        logits = robust(x)
    cert = robust.certify(x)
    for i in range(3):
        naive = _naive_defended(evidence[i], defense, window, squash=robust.squash)
        torch.testing.assert_close(logits[i].double(), naive, rtol=1e-5, atol=1e-5)
        assert cert.prediction[i] == naive.argmax()
        margin = _naive_margin(evidence[i], int(cert.prediction[i]), defense, window, robust.bounds, robust.squash)
        assert cert.margin[i].item() == pytest.approx(margin, rel=1e-9, abs=1e-9)
        assert bool(cert.certified[i]) == (margin > 0)


def _worst_cases(clean, pred, lo, hi, gen):
    """Raw evidence [C, h, w] an adversary might put in the affected window: per other class
    the extremes (that class high, the predicted class low), and random values at several
    scales, including window sums close to the clean maxima that masking compares with."""
    c = clean.shape[0]
    big = max(1.0, clean.abs().max().item())
    out = []
    for k in range(c):
        if k == pred:
            continue
        v = clean.clone()
        v[k], v[pred] = 1e6, -1e6  # squashed to the bounds, or beyond anything clean
        out.append(v)
        for scale in (0.3, 1.0, 3.0):
            v = clean.clone()
            v[k] = big * scale * torch.rand(clean.shape[1:], generator=gen, dtype=torch.float64)
            v[pred] = -big * torch.rand(clean.shape[1:], generator=gen, dtype=torch.float64)
            out.append(v)
    for scale in (0.1, 1.0, 10.0):
        out.append(big * scale * (2 * torch.rand(clean.shape, generator=gen, dtype=torch.float64) - 1))
    return out


@pytest.mark.parametrize("defense,kwargs", DEFENCES)
@pytest.mark.parametrize("size,patch", [((64, 64), 9), ((56, 48), 14)])
def test_brute_force_no_certified_prediction_changes(defense, kwargs, size, patch):
    gen = torch.Generator().manual_seed(1)
    model = _tiny(seed=2)
    # The model's evidence of random images, plus a class favoured everywhere by a margin
    # from tiny to large, so some images certify and some do not.
    x = torch.randn(12, 3, *size, generator=gen)
    robust = RobustBagNet(model, patch, defense, **kwargs).eval()
    geo = affected_locations(model, size, patch)
    with torch.no_grad():
        evidence = model.patch_logits(x).double()
    evidence = (evidence - evidence.mean(1, keepdim=True)) / evidence.std()
    strength = torch.logspace(-1.5, 2.5, len(x), dtype=torch.float64)
    favoured = torch.arange(len(x)) % evidence.shape[1]
    evidence[torch.arange(len(x)), favoured] += strength[:, None, None]
    cert = robust.certify_evidence(evidence, geo.window, geo.patch_size)
    assert 0 < int(cert.certified.sum()) < len(evidence), "the set should hold certified and uncertified images"
    masks = {(r, c): geo.mask(t, left) for t, r in enumerate(geo.rows) for left, c in enumerate(geo.cols)}
    flipped_uncertified = 0
    for i in range(len(evidence)):
        pred = int(cert.prediction[i])
        flips = 0
        for mask in masks.values():
            if not mask.any():
                continue
            for values in _worst_cases(evidence[i], pred, *robust.bounds, gen):
                attacked = torch.where(mask, values, evidence[i])
                if robust.defend(attacked[None], geo.window).argmax(1).item() != pred:
                    flips += 1
        if cert.certified[i]:
            assert flips == 0, f"image {i} is certified (margin {cert.margin[i]:.4g}) but its prediction changed"
        flipped_uncertified += flips > 0
    # The brute force has teeth: it changes some prediction that is not certified.
    assert flipped_uncertified > 0


def test_small_map_has_no_masked_prediction():
    # A patch whose window covers the whole evidence map can replace all evidence; masking
    # it leaves nothing, and a tie of zeros is no prediction.
    model = _tiny()
    with pytest.raises(ValueError, match="covers the whole 2x2 evidence map"):
        certify(model, torch.randn(2, 3, 24, 24), patch_size=20, defense="mask")


def test_undefended_model_is_never_certified_and_equals_the_model():
    model = _tiny()
    x = torch.randn(2, 3, 32, 32)
    robust = RobustBagNet(model, "2%", "none").eval()
    with torch.no_grad():
        logits = robust(x)
        assert logits.dtype == torch.float64  # like the certificates
        torch.testing.assert_close(logits.float(), model(x), rtol=1e-5, atol=1e-5)
    cert = robust.certify(x)
    assert not cert.certified.any() and torch.isinf(cert.margin).all()


def test_certify_counts_certified_accuracy_and_refuses_mixed_options():
    model = _tiny()
    x = torch.randn(4, 3, 32, 32)
    cert = certify(model, x, patch_size="3%", defense="mask")
    labels = cert.prediction.clone()
    labels[0] = (labels[0] + 1) % 4
    assert cert.certified_correct(labels).tolist() == [False, *cert.certified[1:].tolist()]
    with pytest.raises(ValueError, match="brings its own"):
        certify(RobustBagNet(model, 4), x, patch_size=5)
    with pytest.raises(ValueError, match="needs patch_size"):
        certify(model, x)
    with pytest.raises(ValueError, match="unknown defense"):
        RobustBagNet(model, 4, "smooth")
    with pytest.raises(ValueError, match="no patch logits"):
        RobustBagNet(torch.nn.Linear(2, 2), 4)
    with pytest.raises(ValueError, match="low < high"):
        RobustBagNet(model, 4, "clip", clip_range=(1.0, 0.0))


@pytest.mark.parametrize("name", ["bagnet_tiny", "bagnet9_slim"])
def test_batched_fused_and_any_size(name):
    model = randomize_batchnorm(create_model(name, num_classes=5))
    x = torch.randn(3, 3, 45, 52)
    for defense in ("mask", "clip"):
        robust = RobustBagNet(model, "2%", defense).eval()
        fused = RobustBagNet(model.fuse(), "2%", defense).eval()
        with torch.no_grad():
            batched, one = robust(x), torch.cat([robust(x[i:i + 1]) for i in range(3)])
            torch.testing.assert_close(batched, one, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(fused(x), batched, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", bagnet.list_models())
def test_every_registered_bagnet_defends_and_certifies(name):
    model = create_model(name, num_classes=5).eval()
    x = torch.randn(2, 3, 80, 88)  # at 56 x 64 a 3% patch reaches all of BagNet-33's 3 x 4 map
    for defense in ("mask", "clip"):
        robust = RobustBagNet(model, "3%", defense).eval()
        with torch.no_grad():
            logits = robust(x)
        cert = robust.certify(x)
        assert logits.shape == (2, 5) and torch.isfinite(logits).all()
        top2 = logits.double().topk(2, 1).values
        clear = top2[:, 0] - top2[:, 1] > 1e-6  # float32 rounding decides nothing here
        assert torch.equal(cert.prediction[clear], logits.argmax(1)[clear])


def test_certify_and_wrapping_leave_the_models_mode_alone():
    model = _tiny().eval()
    x = torch.randn(3, 3, 40, 40)
    with torch.no_grad():
        before = model(x)
        certify(model, x, patch_size=6, defense="mask")  # wraps the plain model itself
        assert not model.training and not any(m.training for m in model.modules())
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)
        robust = RobustBagNet(model, 6, "clip")
        assert not robust.training  # an eval() model gives an eval() defence
        certify(robust, x)
        assert not model.training
        # a model in training mode stays in training mode, its wrapper too
        model.train()
        robust = RobustBagNet(model, 6, "mask")
        certify(robust, x)
        assert robust.training and all(m.training for m in model.modules())
