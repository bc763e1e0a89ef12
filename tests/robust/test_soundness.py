"""Certificates are sound from every entry point: evidence in eval mode whatever the caller's
mode, windows no smaller than the geometry's, one prediction for ``forward`` and the
certificate, bounded memory at large evidence maps, and no prediction claimed from a tie."""

import copy
import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch

from bagnet import create_model
from bagnet.robust import RobustBagNet, affected_locations, certify, robustness_records
from bagnet.robust._geometry import affected_window
from bagnet.testing.models import randomize_batchnorm

from .test_defense import _naive_margin


def _tiny(seed=0, classes=4):
    torch.manual_seed(seed)
    model = randomize_batchnorm(create_model("bagnet_tiny", num_classes=classes), seed)
    with torch.no_grad():
        model.fc.bias.zero_()
        model.fc.weight.mul_(20)
    return model


def _modes(model):
    return [m.training for m in model.modules()]


# -- 1. evidence in eval mode, the caller's modes restored ---------------------------------


@pytest.mark.parametrize("defense", ["mask", "clip"])
def test_a_training_mode_model_is_certified_as_in_eval_mode_and_keeps_its_modes(defense):
    model = _tiny()
    x = torch.randn(6, 3, 40, 40, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        evidence = model.eval().patch_logits(x).double()  # the model's evidence, by definition
    reference = RobustBagNet(model, 6, defense).certify(x)
    window = affected_locations(model, (40, 40), 6).window
    robust0 = RobustBagNet(model, 6, defense)
    for i in range(len(x)):  # the eval-mode certificates are the definition's
        margin = _naive_margin(evidence[i], int(reference.prediction[i]), defense, window, robust0.bounds,
                               robust0.squash)
        assert reference.margin[i].item() == pytest.approx(margin, rel=1e-9, abs=1e-9)

    # Training mode, one block switched back to eval by hand: every flag must come back as it was.
    model.train()
    next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)).eval()
    modes = _modes(model)
    with torch.no_grad():  # batch statistics differ from the running ones: the test has teeth
        assert not torch.allclose(copy.deepcopy(model).patch_logits(x).double(), evidence, atol=1e-3)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    robust = RobustBagNet(model, 6, defense)
    assert robust.training
    got = robust.certify(x)
    assert torch.equal(got.prediction, reference.prediction) and torch.equal(got.certified, reference.certified)
    torch.testing.assert_close(got.margin, reference.margin, rtol=1e-12, atol=1e-12)
    assert _modes(model) == modes and robust.training
    for k, v in model.state_dict().items():  # no BatchNorm statistics were updated either
        if k in stats:
            assert torch.equal(v, stats[k]), k

    records = robustness_records(model, [(x, reference.prediction, list(range(len(x))))], [6], [defense])
    assert _modes(model) == modes
    for i, row in enumerate(records):
        (out,) = row["results"]
        assert out["prediction"] == int(reference.prediction[i]) and out["certified"] == bool(reference.certified[i])
        assert out["margin"] == pytest.approx(float(reference.margin[i]), rel=1e-12, abs=1e-12)

    # Evidence handed in cannot be checked, so a training-mode model is refused.
    with pytest.raises(ValueError, match=r"training mode.*model\.eval\(\)"):
        robust.certify_evidence(evidence, image_size=(40, 40))
    assert _modes(model) == modes


def test_records_restore_modes_when_a_batch_fails():
    model = _tiny().train()
    modes = _modes(model)
    bad = torch.randn(1, 3, 5, 5)  # smaller than the receptive field
    with pytest.raises(ValueError):
        robustness_records(model, [(bad, torch.tensor([0]), [0])], [2], ["mask"])
    assert _modes(model) == modes


# -- 2. windows from the geometry -----------------------------------------------------------


def test_a_too_small_window_is_refused_and_a_larger_one_accepted():
    model = _tiny()
    x = torch.randn(3, 3, 56, 48)
    with torch.no_grad():
        evidence = model.patch_logits(x)
    geo = affected_locations(model, (56, 48), 14)
    assert geo.window == (3, 3)
    robust = RobustBagNet(model, 14, "mask")
    with pytest.raises(ValueError, match=r"window \(2, 3\).*smaller than the 3x3 window.*14 px patch"):
        robust.certify_evidence(evidence, (2, 3), 14)
    with pytest.raises(ValueError, match=r"window \(3, 1\).*smaller than the 3x3 window"):
        robust.certify_evidence(evidence, (3, 1), image_size=(56, 48))
    derived = robust.certify_evidence(evidence, patch_size=14)
    exact = robust.certify_evidence(evidence, image_size=(56, 48))
    assert derived.window == exact.window == geo.window and torch.equal(derived.margin, exact.margin)
    larger = robust.certify_evidence(evidence, (4, 4), 14)  # only weaker
    assert larger.window == (4, 4)
    # a share of the image needs the image size (or the side in pixels) to know its window
    with pytest.raises(ValueError, match="image_size"):
        RobustBagNet(model, "2%", "mask").certify_evidence(evidence)


@pytest.mark.parametrize("q_s", [(9, 8), (33, 8), (17, 4)])
def test_the_window_of_an_evidence_map_is_that_of_every_image_size_giving_it(q_s):
    class Geometry:
        receptive_field, patch_stride = q_s

        def patch_grid(self, h, w):
            q, s = q_s
            return (h - q) // s + 1, (w - q) // s + 1

    model = Geometry()
    q, s = q_s
    for h in range(q, q + 6 * s):
        for p in sorted({1, 2, s - 1, s, s + 1, q, h // 2, h}):
            if not 1 <= p <= h:
                continue
            size = (h, h + s // 2 + 1)
            grid = model.patch_grid(*size)
            want = affected_locations(model, size, p).window
            assert affected_window(model, grid, p) == want, (h, p)


# -- 3. forward and the certificate agree at near-ties -----------------------------------------


@pytest.mark.parametrize("defense,kwargs", [("mask", {}), ("clip", {}), ("clip", {"clip_range": (-5.0, 5.0)}),
                                            ("none", {})])
def test_forward_and_the_certificate_agree_where_float32_ties(defense, kwargs):
    model = _tiny(classes=2)
    # float32 patch logits, the same for both classes but one location of class 1 one float32
    # step higher (outside the window masking removes, the top-left 2 x 2 of 2.0): class 1
    # leads by 2^-23 / 16 after the mean, a tie once rounded to float32, not in float64.
    evidence = torch.ones(1, 2, 4, 4)
    evidence[:, :, :2, :2] = 2.0
    evidence[0, 1, 3, 3] = 1 + 2**-23
    model.patch_logits = lambda x: evidence
    robust = RobustBagNet(model, 3, defense, **kwargs)
    x = torch.zeros(1, 3, 40, 40)
    assert model.patch_grid(40, 40) == (4, 4)
    cert = robust.certify(x)
    with torch.no_grad():
        logits = robust(x)
    assert int(cert.prediction[0]) == 1  # float64 decides
    assert logits.float()[0, 0] == logits.float()[0, 1]  # where float32 would tie
    assert int(logits.argmax(1)[0]) == int(cert.prediction[0])


# -- 4. bounded memory -----------------------------------------------------------------------------


def _materialised_margin(e, pred, window):
    """The mask bound as the first implementation computed it: every window position's
    zeroed evidence materialised ([n, windows, h, w]); only for small maps."""
    import torch.nn.functional as F

    def sums(t):
        lead = t.shape[:-2]
        out = F.avg_pool2d(t.reshape(-1, 1, *t.shape[-2:]), window, stride=1, divisor_override=1)
        return out.reshape(*lead, *out.shape[-2:])

    h, w = e.shape[-2:]
    (wh, ww) = window
    keep = torch.ones((h - wh + 1) * (w - ww + 1), h, w, dtype=torch.float64)
    k = 0
    for r in range(h - wh + 1):
        for s in range(w - ww + 1):
            keep[k, r:r + wh, s:s + ww] = 0
            k += 1
    s_all = sums(e)
    outside = e.sum((2, 3))[:, :, None, None] - s_all
    idx = pred[:, None, None, None]
    outside_pred = outside.gather(1, idx.expand(-1, 1, *outside.shape[-2:]))[:, 0].flatten(1)
    e_pred = e.gather(1, idx.expand(-1, 1, h, w))[:, 0]
    lower = outside_pred - sums(e_pred[:, None] * keep[None]).flatten(2).amax(2)
    upper = outside.scatter(1, idx.expand(-1, 1, *outside.shape[-2:]), -math.inf).amax(1).flatten(1)
    return (lower - upper).amin(1) / (h * w)


@pytest.mark.parametrize("size,patch,mixed", [((48, 40), 10, True), ((64, 64), 17, True), ((56, 56), 1, True),
                                              ((40, 72), 30, False), ((72, 40), 30, False)])
def test_bounded_memory_mask_bound_equals_the_materialised_one(size, patch, mixed):
    # The last two: the window spans every row (or column), so no window misses it there.
    model = _tiny(seed=4, classes=5)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(8, 3, *size, generator=gen)
    with torch.no_grad():
        evidence = model.patch_logits(x).double()
    # a class favoured everywhere by a margin from tiny to large: some certify, some do not
    evidence = (evidence - evidence.mean(1, keepdim=True)) / evidence.std()
    evidence[torch.arange(8), torch.arange(8) % 5] += torch.logspace(-1.5, 1.5, 8, dtype=torch.float64)[:, None, None]
    robust = RobustBagNet(model, patch, "mask")
    cert = robust.certify_evidence(evidence, image_size=size, chunk=3)
    want = _materialised_margin(evidence.clamp(min=0), cert.prediction, cert.window)
    torch.testing.assert_close(cert.margin, want, rtol=1e-12, atol=1e-12)
    if mixed:  # the bound was tested where it decides
        assert 0 < int(cert.certified.sum()) < 8


def test_a_bagnet33_map_at_896_px_is_certified_in_bounded_memory():
    # 2% of 896 x 896 is a 127 px patch, a 20 x 20 window on BagNet-33's 108 x 108 map: the
    # materialised bound held 89 * 89 window positions x 108 x 108 float64 per image (0.7 GB).
    script = textwrap.dedent("""
        import json, resource, time, torch
        import bagnet
        from bagnet.robust import RobustBagNet, affected_locations
        model = bagnet.create_model("bagnet33_w25", num_classes=3).eval()
        geo = affected_locations(model, 896, "2%")
        torch.manual_seed(0)
        evidence = torch.randn(2, 3, *geo.grid)
        evidence[:, 1] += 0.4
        robust = RobustBagNet(model, "2%", "mask")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        cert = robust.certify_evidence(evidence, geo.window, geo.patch_size)
        seconds = time.perf_counter() - t0
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
        print(json.dumps({"grid": list(geo.grid), "window": list(cert.window), "peak": peak, "seconds": seconds,
                          "margin": cert.margin.tolist()}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["grid"] == [108, 108] and got["window"] == [20, 20]
    assert got["peak"] < 256 * 2**20, f"peak memory grew by {got['peak'] / 2**20:.0f} MB"
    assert all(math.isfinite(m) for m in got["margin"])


# -- 5. a window covering the whole map leaves nothing to decide on --------------------------


def test_masking_a_whole_map_raises_instead_of_predicting_from_a_tie():
    model = _tiny()
    x = torch.randn(2, 3, 40, 40)
    assert model.patch_grid(40, 40) == (4, 4)
    # the largest patch whose window leaves a location out, by the definition
    largest = max(p for p in range(1, 41) if affected_locations(model, 40, p).window != (4, 4))
    assert affected_locations(model, 40, 30).window == (4, 4) and largest < 30
    for call in (lambda: certify(model, x, patch_size=30, defense="mask"),
                 lambda: RobustBagNet(model, 30, "mask").eval()(x)):
        with pytest.raises(ValueError, match=rf"a 30 px patch covers the whole 4x4 evidence map.*nothing is left "
                                             rf"to decide on.*at most {largest} px"):
            call()
    certify(model, x, patch_size=largest, defense="mask")
    # clip keeps every location: it predicts, and cannot certify
    cert = certify(model, x, patch_size=30, defense="clip")
    assert not cert.certified.any()
    # a map so small that every patch reaches all of it says so
    assert model.patch_grid(24, 24) == (2, 2)
    with pytest.raises(ValueError, match="covers the whole 2x2 evidence map.*at this image size every patch does"):
        certify(model, torch.randn(1, 3, 24, 24), patch_size=1, defense="mask")
