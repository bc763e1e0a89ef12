"""PatchCleanser's certificates are never wrong: by brute force (every sticker position,
every sticker of extreme values, on a classifier whose arithmetic is exact), and against the
PGD sticker attack on real networks, through every entry point."""

import itertools

import pytest
import torch
import torchvision

from bagnet.robust import PatchCleanser, certify, patch_attack, robustness_records, summarize

from .test_attack import _tiny
from .test_cleanser import _centred, _images


def _stickered(image, p, values):
    """Every sticker of side ``p`` whose pixels take ``values``, at every position: ``[S, C, H, W]``."""
    c, h, w = image.shape
    contents = torch.tensor(list(itertools.product(values, repeat=c * p * p)), dtype=image.dtype)
    contents = contents.reshape(-1, c, p, p)
    out = []
    for a in range(h - p + 1):
        for b in range(w - p + 1):
            x = image.expand(len(contents), -1, -1, -1).clone()
            x[:, :, a:a + p, b:b + p] = contents
            out.append(x)
    return torch.cat(out)


@pytest.mark.parametrize("seed", [0, 2])
def test_no_sticker_anywhere_changes_a_certified_prediction_brute_force(seed):
    # 7 x 8 images of -1, 0, 1; 2 px stickers of -3, 0, 1 or 3 in every pixel (256 stickers at
    # 42 positions); 3 x 3 masks of 3 px filled with 0.5. The classifier's integer weights
    # make its arithmetic exact: every batch gives the same logits, so the certificate and
    # the brute force see one classifier.
    p, k, values = 2, 3, (-3.0, 0.0, 1.0, 3.0)
    x = _images(10, 1, 7, 8, seed + 10)
    model = _centred(seed, x)
    defended = PatchCleanser(model, p, k, fill=0.5, chunk=4096)
    cert = defended.certify(x)
    certified = cert.certified.nonzero()[:, 0].tolist()
    uncertified = (~cert.certified).nonzero()[:, 0].tolist()[:2]
    assert certified and uncertified
    undefended_flipped = defended_flipped = 0
    for i in certified + uncertified:
        attacked = _stickered(x[i], p, values)
        got = defended.predict(attacked).prediction
        with torch.no_grad():
            plain = model(attacked).argmax(1)
            clean = int(model(x[i:i + 1]).argmax(1))
        if i in certified:
            wrong = (got != cert.prediction[i]).nonzero()[:, 0]
            assert not len(wrong), f"image {i}: sticker {int(wrong[0])} of {len(attacked)} changes a certified prediction"
            undefended_flipped += int((plain != clean).sum())
        else:
            defended_flipped += int((got != cert.prediction[i]).sum())
    # The test has teeth: stickers flip the undefended model on the certified images, and
    # flip the defence where it is not certified.
    assert undefended_flipped > 0 and defended_flipped > 0


def _check_attack(defended, x, labels, cert, **kw):
    result = patch_attack(defended, x, labels, defended.patch_size, **kw)
    clean = result.clean_prediction == labels
    attacked = result.correct(labels)
    certified = cert.certified_correct(labels)
    assert torch.equal(result.clean_prediction, cert.prediction)  # forward's argmax is the certified prediction
    assert not (attacked & ~clean).any()
    assert not (certified & ~attacked).any(), "a certified image was flipped by the attack"
    assert not (cert.certified & result.flipped).any()
    with torch.no_grad():  # the attacked predictions are the defence's on the returned images
        assert torch.equal(defended.predict(result.images).prediction, result.prediction)
    return clean.float().mean().item(), attacked.float().mean().item(), certified.float().mean().item(), result


def test_the_attack_never_flips_a_certified_image_of_a_bagnet():
    model = _tiny(40, favour=0.3)
    x = torch.randn(8, 3, 40, 40, generator=torch.Generator().manual_seed(3))
    defended = PatchCleanser(model, 6, 3).eval()
    cert = defended.certify(x)
    labels = cert.prediction.clone()
    labels[0] = (labels[0] + 1) % 3  # one image is wrong from the start
    clean, attacked, certified, _ = _check_attack(defended, x, labels, cert, steps=4, positions=3, search_steps=2,
                                                  refine=1)
    assert certified <= attacked <= clean and certified > 0
    # The same attack flips the undefended model: the no-flip check above was not vacuous.
    undefended = patch_attack(model, x, labels, 6, steps=4, positions=3, search_steps=2, refine=1)
    assert undefended.flipped.any()


def test_records_certify_and_attack_a_torchvision_model():
    torch.manual_seed(0)
    dnn = torchvision.models.resnet18(num_classes=3).eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        dnn.fc.bias.sub_(dnn(x).mean(0))  # centred outputs: predictions vary between images
    cert = certify(dnn, x, patch_size=8, defense="cleanser", masks=3)
    labels = cert.prediction.clone()
    attack = dict(steps=2, positions=2, search_steps=1, refine=1)
    records = robustness_records(dnn, [(x, labels, list(range(4)))], [8], ["cleanser", "none"], attack=attack,
                                 cleanser_options={"masks": 3})
    for k, row in enumerate(records):
        out, plain = row["results"]
        assert out["defense"] == "cleanser" and out["prediction"] == int(cert.prediction[k])
        assert out["certified"] == bool(cert.certified[k]) and out["window"] == list(cert.window)
        assert out["margin"] == pytest.approx(float(cert.margin[k]), rel=1e-6, abs=1e-6)
        assert out["masks"] == 9 and out["passes"] == 45 and out["stride"] == [9, 9] and out["image_size"] == [32, 32]
        assert not (out["certified"] and out["flipped"])
        assert plain["defense"] == "none" and "certified" not in plain and plain["passes"] == 1
    (cleanser, none) = summarize(records)
    assert cleanser.certified_but_flipped == 0 and cleanser.passes == 45 and none.certified is None
    assert cleanser.certified <= cleanser.attacked <= cleanser.clean
    # Without certificates, the records say how many images the prediction took.
    (row, *_) = robustness_records(dnn, [(x, labels, list(range(4)))], [8], ["cleanser"], certify=False,
                                   cleanser_options={"masks": 3})
    assert "certified" not in row["results"][0] and row["results"][0]["passes"] >= 9
    with pytest.raises(ValueError, match="no patch logits: the mask and clip defences need a BagNet"):
        robustness_records(dnn, [(x, labels, list(range(4)))], [8], ["mask"])
