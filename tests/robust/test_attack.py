"""patch_attack: a real pixel-space sticker attack. On every run certified accuracy <=
accuracy under attack <= clean accuracy, and no certified image is ever flipped."""

import pytest
import torch
import torchvision

from bagnet import create_model
from bagnet.robust import RobustBagNet, patch_attack
from bagnet.testing.models import randomize_batchnorm


def _tiny(size=40, favour=0.0):
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model("bagnet_tiny", num_classes=3))
    with torch.no_grad():
        # Centre the evidence on typical inputs: no class wins everywhere, so predictions
        # differ between images and a sticker has something to fight for.
        features = model.forward_features(torch.randn(16, 3, size, size)).mean((0, 2, 3))
        model.fc.weight.mul_(5)
        model.fc.bias.copy_(-model.fc.weight @ features)
        model.fc.bias[0] += favour  # some images then certify, some do not
    return model


def _check(model, x, labels, patch, certificate=None, **kw):
    result = patch_attack(model, x, labels, patch, steps=4, positions=4, search_steps=2, refine=1, **kw)
    clean = (result.clean_prediction == labels)
    attacked = result.correct(labels)
    assert not (attacked & ~clean).any()  # attacked <= clean, image by image
    assert (result.prediction[~clean] == result.clean_prediction[~clean]).all()  # wrong images are left alone
    if certificate is not None:
        certified = certificate.certified_correct(labels)
        assert not (certified & ~attacked).any(), "a certified image was flipped by the attack"
        assert not (certificate.certified & result.flipped).any()
    # The strongest sticker is really in the returned image, where the result says it is.
    changed = (result.images != x).flatten(1).any(1)
    assert (changed == (result.position[:, 0] >= 0)).all()
    return clean.float().mean().item(), attacked.float().mean().item(), result


@pytest.mark.parametrize("defense", ["none", "mask", "clip"])
def test_certified_le_attacked_le_clean_and_no_certified_flip(defense):
    model = _tiny(56, favour=0.2)
    x = torch.randn(8, 3, 56, 56, generator=torch.Generator().manual_seed(3))
    robust = RobustBagNet(model, 6, defense, clip_range=(-1.0, 1.0) if defense == "clip" else None).eval()
    cert = robust.certify(x)
    labels = cert.prediction.clone()
    labels[0] = (labels[0] + 1) % 3  # one image is wrong from the start
    clean, attacked, result = _check(robust, x, labels, 6, cert)
    certified = cert.certified_correct(labels).float().mean().item()
    assert certified <= attacked <= clean
    assert (certified > 0) == (defense != "none")  # the no-flip check above was not vacuous
    # The attack re-evaluates the defended model: its claimed prediction is what the model says.
    with torch.no_grad():
        assert (robust(result.images).argmax(1) == result.prediction).all()


def test_the_attack_flips_an_undefended_bagnet():
    model = _tiny()
    x = torch.randn(6, 3, 40, 40, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        labels = model(x).argmax(1)
    clean, attacked, result = _check(model, x, labels, 16)
    assert clean == 1.0 and attacked < clean and result.flipped.any()


def test_torchvision_dnn_and_its_normalization():
    torch.manual_seed(0)
    dnn = torchvision.models.resnet18(num_classes=3).eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        labels = dnn(x).argmax(1)
    clean, attacked, result = _check(dnn, x, labels, 12, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert attacked < clean
    # Sticker pixels lie in the image range: normalized values within [(0-0.5)/0.25, (1-0.5)/0.25].
    i = int(result.flipped.nonzero()[0, 0])
    t, left = result.position[i].tolist()
    inside = result.images[i, :, t:t + 12, left:left + 12]
    assert inside.min() >= -2 - 1e-6 and inside.max() <= 2 + 1e-6


def test_bad_attack_settings_are_refused():
    with pytest.raises(ValueError, match="search_steps"):
        patch_attack(_tiny(), torch.randn(1, 3, 32, 32), None, 8, search_steps=0)
