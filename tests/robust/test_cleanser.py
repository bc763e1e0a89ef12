"""PatchCleanser: the mask set covers every sticker position, and the batched double masking
and certificate make the decisions of a naive, loop-by-loop restatement of the paper's
Algorithm 1 and certification on random tiny classifiers."""

import copy
import math
from collections import Counter

import pytest
import torch
from torch import nn

from bagnet.robust import PatchCleanser, RobustBagNet, certify, mask_set
from bagnet.robust import _cleanser as cleanser_module

# -- the mask set ---------------------------------------------------------------------------


def _naive_starts(n, p, k):
    """The paper's mask stride and size along one axis, its masks placed by a plain loop."""
    stride = math.ceil((n - p + 1) / k)
    size = min(p + stride - 1, n)
    starts, b = [], 0
    while b <= n - size:
        starts.append(b)
        b += stride
    if starts[-1] != n - size:
        starts.append(n - size)
    return size, stride, starts


SETTINGS = [  # (height, width, sticker, masks per axis)
    (224, 224, 32, 6), (192, 192, 28, 6), (10, 10, 1, 6), (10, 17, 9, 6), (17, 10, 9, 6), (20, 13, 12, 3),
    (12, 12, 11, 2), (9, 40, 9, 4), (40, 9, 9, 4), (31, 29, 7, 5), (16, 16, 15, 16), (23, 11, 3, 2), (7, 8, 2, 3),
]


@pytest.mark.parametrize("h,w,p,k", SETTINGS)
def test_the_mask_set_covers_every_sticker_position(h, w, p, k):
    masks = mask_set((h, w), p, k)
    (mh, sh, rows), (mw, sw, cols) = _naive_starts(h, p, k), _naive_starts(w, p, k)
    assert masks.mask_size == (mh, mw) and masks.stride == (sh, sw)
    assert list(masks.rows) == rows and list(masks.cols) == cols
    assert len(masks.rows) <= k and len(masks.cols) <= k and len(masks) == len(rows) * len(cols)
    keep = masks.keep()
    assert keep.shape == (len(masks), h, w)
    for i, (top, left) in enumerate(masks.corners):  # every mask lies inside the image, whole
        assert 0 <= top <= h - mh and 0 <= left <= w - mw
        assert int((~keep[i]).sum()) == mh * mw
    # every sticker position lies inside some mask: the masked pixels under the sticker, counted
    # at every position (a p x p box sum), are all p * p of them for at least one mask
    under = nn.functional.avg_pool2d((~keep)[:, None].float(), p, stride=1, divisor_override=1)[:, 0]
    inside = under == p * p  # [masks, h - p + 1, w - p + 1]
    assert inside.shape[1:] == (h - p + 1, w - p + 1) and inside.any(0).all()
    g = torch.Generator().manual_seed(h * w + p)
    sample = torch.stack([torch.randint(0, h - p + 1, (40,), generator=g),
                          torch.randint(0, w - p + 1, (40,), generator=g)], 1).tolist()
    for a, b in [*sample, (0, 0), (h - p, w - p)]:
        assert masks.covering(a, b) == inside[:, a, b].nonzero()[:, 0].tolist()
    assert masks.certification_passes == len(masks) * (len(masks) + 1) // 2


def test_the_mask_sets_of_the_paper_and_of_the_default_model():
    # ImageNet, 224 px, a 2% sticker (32 px), 6 x 6 masks: stride 33, masks of 64 px (the paper's numbers)
    masks = mask_set(224, "2%", 6)
    assert (masks.patch_size, masks.stride, masks.mask_size, len(masks)) == (32, (33, 33), (64, 64), 36)
    assert masks.rows == (0, 33, 66, 99, 132, 160)
    assert masks.certification_passes == 36 + 630
    # 192 px, 2% is a 28 px sticker: stride ceil(165 / 6) = 28, masks of 28 + 28 - 1 = 55 px
    masks = mask_set((192, 192), "2%")
    assert (masks.patch_size, masks.stride, masks.mask_size) == (28, (28, 28), (55, 55))
    assert masks.rows == (0, 28, 56, 84, 112, 137)
    # a non-square image gets its own stride per axis: 100 x 60, 10 px, k 4
    masks = mask_set((100, 60), 10, 4)
    assert masks.stride == (23, 13) and masks.mask_size == (32, 22)
    assert masks.rows == (0, 23, 46, 68) and masks.cols == (0, 13, 26, 38)
    assert masks.describe() == "16 masks (4 x 4) of 32x22 px, stride 23x13 px, against a 10 px sticker"
    # fewer than k where the stride rounds up: 10 px, 1 px sticker, k 6 -> stride 2, 5 masks per axis
    assert len(mask_set(10, 1, 6).rows) == 5


@pytest.mark.parametrize("args,message", [
    (((32, 32), 8, 0), "masks per axis must be a whole number of at least 1, got 0"),
    (((32, 32), 8, -2), "at least 1, got -2"),
    (((32, 32), 8, 2.5), "at least 1, got 2.5"),
    (((32, 32), 8, True), "at least 1, got True"),
    (((32, 32), 40, 6), "a 40 x 40 patch does not fit in a 32 x 32 image"),
    (((32, 48), 33, 6), "does not fit in a 32 x 48 image"),
    (((32, 32), 0, 6), "does not fit"),
    # k = 1: one mask per axis, as large as the axis: the whole image
    (((32, 32), 8, 1), "an 8 px sticker with 1 mask per axis needs a 32x32 px mask, the whole 32x32 image: every "
                       "masked image would be blank and nothing is left to classify; use more masks per axis"),
    (((16, 16), 16, 6), "the sticker covers the whole image: use a smaller sticker"),
])
def test_impossible_mask_sets_are_refused(args, message):
    with pytest.raises(ValueError) as info:
        mask_set(*args)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_sticker_near_the_image_size_is_covered():
    masks = mask_set((16, 16), 15, 2)  # stride 1, masks of 15 px at 0 and 1
    assert masks.mask_size == (15, 15) and masks.rows == (0, 1) and len(masks) == 4
    masks = mask_set((16, 30), 16, 3)  # the sticker spans the height: masks span it too
    assert masks.mask_size[0] == 16 and masks.rows == (0,) and len(masks.cols) == 3
    assert all(masks.covering(0, b) for b in range(30 - 16 + 1))


# -- the naive restatement of the paper -------------------------------------------------------


class _Exact(nn.Module):
    """A random tiny CNN whose arithmetic is exact in float32: integer weights, half-integer
    inputs and fills, sums instead of means. Every batching gives the same logits, so the
    batched implementation and the naive one see the same classifier, bit for bit."""

    def __init__(self, seed: int, channels: int = 1, classes: int = 3):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(channels, 5, 3, padding=1)
        self.conv2 = nn.Conv2d(5, 5, 3, padding=1)
        self.fc = nn.Linear(5, classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randint(-3, 4, p.shape, generator=g).float())

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.sum((2, 3)))


def _centred(seed, x, channels=1, classes=3):
    """A classifier whose outputs on ``x`` are centred (integer bias): predictions vary."""
    model = _Exact(seed, channels, classes).eval()
    with torch.no_grad():
        model.fc.bias.sub_(model(x).mean(0).round())
    return model


def _images(n, channels, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (n, channels, h, w), generator=g).float() - 1  # -1, 0, 1


def _naive_masks(h, w, p, k):
    (mh, _, rows), (mw, _, cols) = _naive_starts(h, p, k), _naive_starts(w, p, k)
    out = []
    for r in rows:
        for c in cols:
            keep = torch.ones(h, w, dtype=torch.bool)
            keep[r:r + mh, c:c + mw] = False
            out.append(keep)
    return out


def _classify(model, image, keep, fill):
    """The model's logits on one image with the pixels outside ``keep`` set to ``fill``."""
    with torch.no_grad():
        return model(torch.where(keep, image, torch.tensor(fill))[None])[0]


def _naive_double_masking(model, image, masks, fill):
    """Algorithm 1 as the paper states it, one masked image at a time."""
    first = [int(_classify(model, image, r, fill).argmax()) for r in masks]
    if len(set(first)) == 1:
        return first[0], 1
    counts = Counter(first)
    majority = min(label for label, c in counts.items() if c == max(counts.values()))
    for i, r0 in enumerate(masks):
        if first[i] == majority:
            continue
        if all(int(_classify(model, image, r0 & r1, fill).argmax()) == first[i] for r1 in masks):
            return first[i], 2
    return majority, 3


def _naive_certificate(model, image, masks, fill, label):
    """The certification's condition (every ordered pair of masks predicts ``label``) and the
    smallest logit gap of ``label`` over those masked images."""
    ok, gap = True, math.inf
    for r0 in masks:
        for r1 in masks:
            logits = _classify(model, image, r0 & r1, fill).double()
            others = [float(v) for c, v in enumerate(logits) if c != label]
            gap = min(gap, float(logits[label]) - max(others))
            ok &= int(logits.argmax()) == label
    return ok, gap


NAIVE = [  # (height, width, sticker, masks per axis, channels, fill)
    (7, 8, 2, 3, 1, 0.5), (9, 6, 3, 2, 1, "mean"), (8, 8, 3, 3, 2, -1.5), (6, 11, 4, 3, 1, 1.0),
]


@pytest.mark.parametrize("h,w,p,k,channels,fill", NAIVE)
def test_batched_double_masking_and_certificates_make_the_naive_decisions(h, w, p, k, channels, fill):
    masks = _naive_masks(h, w, p, k)
    value = 0.0 if fill == "mean" else fill
    cases = Counter()
    for seed in range(8):
        x = _images(10, channels, h, w, seed + 10)
        model = _centred(seed, x, channels)
        defended = PatchCleanser(model, p, k, fill=fill, chunk=7)  # chunks that split images apart
        decision = defended.predict(x)
        cert = defended.certify(x)
        maps = defended.prediction_maps(x)
        with torch.no_grad():
            scores = defended.eval()(x)
        for i in range(len(x)):
            label, case = _naive_double_masking(model, x[i], masks, value)
            assert (int(decision.prediction[i]), int(decision.case[i])) == (label, case), (seed, i)
            assert int(cert.prediction[i]) == label and int(scores[i].argmax()) == label
            ok, gap = _naive_certificate(model, x[i], masks, value, label)
            assert bool(cert.certified[i]) == ok and float(cert.margin[i]) == pytest.approx(gap, abs=1e-9)
            assert (gap > 0) <= ok and (gap < 0) <= (not ok)  # the margin's sign follows the vote
            for a, ra in enumerate(masks):  # the maps are the masked predictions, pair by pair
                for b, rb in enumerate(masks):
                    assert int(maps[i, a, b]) == int(_classify(model, x[i], ra & rb, value).argmax())
            # inference runs the first round, then n - 1 new images per second round tried
            n = len(masks)
            assert int(decision.passes[i]) == n if case == 1 else n < int(decision.passes[i]) <= n * (n + 1) // 2
            cases[case] += 1
        assert cert.window == mask_set((h, w), p, k).mask_size and cert.defense == "cleanser"
        assert cert.masks == len(masks) and cert.passes == len(masks) * (len(masks) + 1) // 2
    assert all(cases[c] for c in (1, 2, 3)), cases  # every branch of Algorithm 1 was compared


def test_one_image_at_a_time_equals_the_batch_and_chunks_do_not_matter(monkeypatch):
    x = _images(9, 1, 9, 7, 3)
    model = _centred(4, x)
    full = PatchCleanser(model, 3, 3, fill=0.5, chunk=1000)
    cert, decision = full.certify(x), full.predict(x)
    monkeypatch.setattr(cleanser_module, "_LOGIT_BYTES", 1)  # certify one image per group
    small = PatchCleanser(model, 3, 3, fill=0.5, chunk=1)
    for i in range(len(x)):
        one, d = small.certify(x[i:i + 1]), small.predict(x[i:i + 1])
        assert int(one.prediction[0]) == int(cert.prediction[i]) == int(d.prediction[0]) == int(decision.prediction[i])
        assert bool(one.certified[0]) == bool(cert.certified[i]) and int(d.passes[0]) == int(decision.passes[i])
        assert float(one.margin[0]) == float(cert.margin[i])
    assert len(small.certify(x).prediction) == len(x)
    empty = full.predict(x[:0])
    assert empty.prediction.shape == (0,) and full.certify(x[:0]).certified.shape == (0,)


# -- the API ----------------------------------------------------------------------------------


def test_fills_write_the_mean_black_or_a_number_into_the_normalized_input():
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return torch.zeros(len(x), 2)

    model = Spy()
    model.pretrained_cfg = {"mean": [0.5, 0.25, 0.0], "std": [0.5, 0.25, 1.0]}
    x = torch.full((1, 3, 8, 8), 7.0)
    masks = mask_set(8, 2, 2)
    top, left = masks.corners[0]
    (mh, mw) = masks.mask_size
    for fill, want in (("mean", [0.0, 0.0, 0.0]), ("black", [-1.0, -1.0, 0.0]), (2.5, [2.5] * 3), ("-1", [-1.0] * 3)):
        seen.clear()
        PatchCleanser(model, 2, 2, fill=fill).predict(x)
        first = seen[0][0]  # the first mask: its pixels hold the fill, the rest the image
        for c in range(3):
            assert torch.all(first[c, top:top + mh, left:left + mw] == want[c])
        assert int((first == 7.0).sum()) == 3 * (64 - mh * mw)
    # black takes the normalization given over the model's
    seen.clear()
    PatchCleanser(model, 2, 2, fill="black", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)).predict(x)
    assert torch.all(seen[0][0, :, top:top + mh, left:left + mw] == 0)
    for fill in ("grey", float("nan"), None):
        with pytest.raises(ValueError, match="fill"):
            PatchCleanser(model, 2, 2, fill=fill)
    with pytest.raises(ValueError, match="fill 'black' needs the normalization of 1-channel images"):
        PatchCleanser(model, 2, 2, fill="black").predict(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="chunk"):
        PatchCleanser(model, 2, 2, chunk=0)


def test_certify_dispatches_to_the_cleanser_and_robust_bagnet_refuses_it():
    x = _images(4, 1, 8, 8, 5)
    model = _centred(1, x)
    want = PatchCleanser(model, 2, 3, fill=0.5).certify(x)
    got = certify(model, x, torch.zeros(4), patch_size=2, defense="cleanser", masks=3, fill=0.5)
    assert torch.equal(got.prediction, want.prediction) and torch.equal(got.certified, want.certified)
    assert torch.equal(certify(PatchCleanser(model, 2, 3, fill=0.5), x).margin, want.margin)
    with pytest.raises(ValueError, match="brings its own patch size"):
        certify(PatchCleanser(model, 2, 3), x, patch_size=4)
    with pytest.raises(ValueError, match="certify needs patch_size"):
        certify(model, x, defense="cleanser")
    with pytest.raises(ValueError, match="3 labels for 4 images"):
        certify(model, x, torch.zeros(3), patch_size=2, defense="cleanser")
    with pytest.raises(ValueError, match="PatchCleanser, for any classifier"):
        RobustBagNet(model, 2, "cleanser")


def test_certificates_use_eval_mode_and_give_every_module_its_mode_back():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2)
    x = torch.randn(5, 3, 12, 12)
    reference = PatchCleanser(model.eval(), 3, 2).certify(x)
    reference_prediction = PatchCleanser(model, 3, 2).predict(x).prediction
    with torch.no_grad():
        reference_logits = model(x)
    model.train()
    model[3].eval()
    modes = [m.training for m in model.modules()]
    with torch.no_grad():  # batch statistics differ from the running ones: the test has teeth
        assert not torch.allclose(copy.deepcopy(model)(x), reference_logits)
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    assert [m.training for m in model.modules()] == modes
    defended = PatchCleanser(model, 3, 2)
    assert defended.training
    got = defended.certify(x)
    assert torch.equal(got.prediction, reference.prediction) and torch.equal(got.margin, reference.margin)
    assert torch.equal(defended.predict(x).prediction, reference_prediction)
    assert [m.training for m in model.modules()] == modes and defended.training
    for k, v in model.state_dict().items():  # no BatchNorm statistics were updated either
        assert torch.equal(v, stats[k]), k


def test_forward_scores_carry_the_surrogate_gradient_and_the_decision():
    x = _images(6, 1, 8, 8, 7).requires_grad_(True)
    model = _centred(2, x.detach())
    defended = PatchCleanser(model, 2, 3, fill=0.5).eval()
    scores = defended(x)
    decision = defended.predict(x.detach())
    assert torch.equal(scores.argmax(1), decision.prediction)
    masks = defended.mask_set((8, 8))
    keep = masks.keep()
    with torch.no_grad():  # the scores: the mean softmax of the first round, plus 2 for the decision
        first = torch.stack([model(torch.where(keep[j], x.detach(), torch.tensor(0.5))) for j in range(len(masks))], 1)
    want = first.softmax(-1).mean(1) + 2 * nn.functional.one_hot(decision.prediction, 3)
    torch.testing.assert_close(scores.detach(), want)
    (grad,) = torch.autograd.grad(scores[:, 0].sum(), x)
    assert grad.abs().sum() > 0  # the attack has a gradient to follow
