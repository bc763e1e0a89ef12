import pytest
import torch

from bagnet.explain import PatchEvidence, evidence_map_reference

from .conftest import randomized


@pytest.fixture(scope="module")
def model():
    return randomized("bagnet_tiny", num_classes=6, seed=4)


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 21, 30, generator=torch.Generator().manual_seed(0))


def test_stride_1_is_the_papers_heatmap_on_every_pixel(model, images):
    target = torch.tensor([2, 5])
    attr = PatchEvidence(model).attribute(images, target=target)
    assert attr.shape == images.shape and attr.dtype == images.dtype
    torch.testing.assert_close(attr, attr[:, :1].expand_as(attr))  # each channel holds map / C
    # the crop-by-crop definition: logit of the zero-padded q x q crop centred on each pixel
    for b in range(2):
        ref = evidence_map_reference(model, images[b : b + 1], classes=[int(target[b])], pad_value=0.0)[0, 0]
        torch.testing.assert_close(attr[b].sum(0), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_native_stride_puts_the_patch_logits_on_their_centres(model, images):
    attr = PatchEvidence(model, stride="native").attribute(images, target=3).sum(1)
    with torch.no_grad():
        patches = model.eval().patch_logits(images)[:, 3]  # the unfused model, [2, 2, 3]
    q, s = model.receptive_field, model.patch_stride
    expected = torch.zeros_like(attr)
    for i in range(patches.shape[1]):
        for j in range(patches.shape[2]):
            expected[:, s * i + (q - 1) // 2, s * j + (q - 1) // 2] = patches[:, i, j]
    torch.testing.assert_close(attr, expected, rtol=1e-4, atol=1e-5)


def test_stride_k_keeps_every_kth_pixel_of_the_stride_1_map(model, images):
    dense = PatchEvidence(model).attribute(images, target=2)
    for k in (2, 3):
        sparse = PatchEvidence(model, stride=k).attribute(images, target=2)
        expected = torch.zeros_like(dense)
        expected[..., ::k, ::k] = dense[..., ::k, ::k]
        torch.testing.assert_close(sparse, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2, "native"])
def test_convergence_delta_checks_the_map_against_the_logits(model, images, stride):
    method = PatchEvidence(model, stride=stride)
    assert method.has_convergence_delta()
    attr, delta = method.attribute(images, target=[1, 4], return_convergence_delta=True)
    with torch.no_grad():
        logits = model.eval()(images)
    assert delta.shape == (2,)
    assert float(delta.abs().max()) < 1e-5 * float(logits.abs().max()) + 1e-6
    # a wrong value at one patch centre shows up as 1 / (number of patches) of it
    gh, gw = model.patch_grid(21, 30)
    o = (model.receptive_field - 1) // 2
    broken = attr.clone()
    broken[0, :, o, o] += 1.0 / 3
    bad = method.compute_convergence_delta(broken, images, [1, 4])
    torch.testing.assert_close(bad - delta, torch.tensor([1.0 / (gh * gw), 0.0]), rtol=1e-4, atol=1e-6)


def test_model_is_left_alone_in_training_mode(images):
    model = randomized("bagnet_tiny", num_classes=6, seed=4).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    PatchEvidence(model).attribute(images, target=0, return_convergence_delta=True)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_works_inside_captum(model, images):
    from captum.attr import NoiseTunnel

    plain = PatchEvidence(model).attribute(images, target=1)
    smooth = NoiseTunnel(PatchEvidence(model)).attribute(images, nt_type="smoothgrad", nt_samples=2, stdevs=0.0,
                                                          target=1)
    torch.testing.assert_close(smooth, plain)


def test_bad_targets_and_models_are_refused(model, images):
    method = PatchEvidence(model)
    with pytest.raises(ValueError, match="target is required"):
        method.attribute(images)
    with pytest.raises(ValueError, match="out of range"):
        method.attribute(images, target=6)
    with pytest.raises(ValueError, match="one per image"):
        method.attribute(images, target=[1, 2, 3])
    with pytest.raises(TypeError, match="integers"):
        method.attribute(images, target=torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match="BagNet"):
        PatchEvidence(torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="stride"):
        PatchEvidence(model, stride=0)
    with pytest.raises(ValueError, match="skips the centres"):  # q = 9: centres at 4 + 8i, not multiples of 3
        PatchEvidence(model, stride=3).attribute(images, target=0, return_convergence_delta=True)
