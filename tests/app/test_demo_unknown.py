"""`bagnet demo` says what the model knows, flags photos of other things, and picks the
authors' ImageNet BagNet by default only when its weights are already cached."""

import hashlib
import logging
import re

import pytest
import torch

import bagnet
from bagnet.app import SAMPLE_NAMES, sample_image
from bagnet.explain import preprocess
from bagnet.models import _factory, _weights

from .conftest import CLASSES, IMG_SIZE
from .test_demo import run_demo

MESSAGE = f"probably none of the {len(CLASSES)} classes this model knows"


def cards(page: str) -> dict[str, str]:
    """Each explained image's card, by its title."""
    found = re.findall(r"<section class=card><h3>([^<]*)</h3>(.*?)</section>", page, flags=re.S)
    return dict(found)


def sample_max_logits(model) -> dict[str, float]:
    """Independent of the demo: each sample photo (all within 2:1, so not cut) resized
    to the model's short side and through the model."""
    out = {}
    for name in SAMPLE_NAMES:
        x, _ = preprocess(sample_image(name), model.pretrained_cfg, img_size=IMG_SIZE)
        with torch.no_grad():
            out[name] = float(model.eval()(x[None])[0].max())
    return out


@pytest.fixture
def calibrated_file(tmp_path, tiny_model_file, tiny_model):
    """The tiny model with a max-logit threshold between the samples' scores: about half
    of them are flagged, so flagging all or none would both fail."""
    scores = sample_max_logits(tiny_model)
    ordered = sorted(scores.values())
    k = len(ordered) // 2
    threshold = (ordered[k - 1] + ordered[k]) / 2  # halfway between two scores, never on one
    model = bagnet.load_model(tiny_model_file)
    unknown = {"method": "max_logit", "threshold": threshold, "held_out": {"cost": 0.05, "caught": 0.5}}
    path = bagnet.save_model_file(tmp_path / "calibrated.pt", model,
                                  {**model.pretrained_cfg, "unknown": unknown})
    flagged = {n for n, s in scores.items() if s < threshold}
    assert 0 < len(flagged) < len(SAMPLE_NAMES)
    return path, flagged


def test_first_lines_say_what_the_model_knows_and_that_nothing_is_flagged(tmp_path, tiny_model_file, capsys):
    code, out, err = run_demo(capsys, "--weights", tiny_model_file, "--out", tmp_path, "--show", "1", "--res", "native")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"bagnet_tiny knows {len(CLASSES)} classes: {', '.join(CLASSES)}"
    assert lines[1].startswith("This model carries no calibrated threshold for 'none of these classes'")
    assert "probably none" not in out
    page = (tmp_path / "report.html").read_text()
    assert f"<b>This model knows {len(CLASSES)} classes: {', '.join(CLASSES)}</b>" in page
    assert "<p class=warn>This model carries no calibrated threshold" in page


def test_every_flagged_sample_says_so_in_the_terminal_and_the_report(tmp_path, calibrated_file, capsys):
    path, flagged = calibrated_file
    code, out, err = run_demo(capsys, "--weights", path, "--out", tmp_path, "--show", len(SAMPLE_NAMES),
                              "--top", "1", "--res", "native")
    assert code == 0, err
    assert out.splitlines()[1].startswith(f"A prediction is flagged '{MESSAGE}' when its max_logit score is below")
    per_image = {line.split(":")[0]: line for line in out.splitlines()[2:-1]}
    assert set(per_image) == set(SAMPLE_NAMES)
    page = (tmp_path / "report.html").read_text()
    shown = cards(page)
    assert set(shown) == set(SAMPLE_NAMES)
    for name in SAMPLE_NAMES:
        assert (MESSAGE in per_image[name]) == (name in flagged), per_image[name]
        assert (f"<p class=unknown>&#9888; {MESSAGE}" in shown[name]) == (name in flagged), name
    assert f"{len(flagged)} images of {len(SAMPLE_NAMES)} flagged" in page


def test_a_long_class_list_is_shortened_on_the_terminal_and_folded_in_the_report(tmp_path, capsys):
    from bagnet.data.imagenet import imagenet_classes

    torch.manual_seed(2)
    names = list(imagenet_classes())
    path = bagnet.save_model_file(tmp_path / "in1k.pt", bagnet.create_model("bagnet_tiny"),
                                  {"classes": names, "img_size": IMG_SIZE})
    code, out, err = run_demo(capsys, "--weights", path, "--out", tmp_path / "o", "--show", "1", "--res", "native")
    assert code == 0, err
    assert out.splitlines()[0] == f"bagnet_tiny knows 1000 classes: {', '.join(names[:12])}, ... and 988 more"
    page = (tmp_path / "o" / "report.html").read_text()
    assert "<details><summary>all 1000</summary>" in page and names[-1] in page


@pytest.fixture
def cached_imagenet_stand_in(tmp_path, monkeypatch):
    """bagnet_tiny registered as the ImageNet default under a tag whose 'download' is a
    hash-named file; installing it in the (per-test) torch hub cache is what a download does."""
    torch.manual_seed(3)
    raw = tmp_path / "raw.pth"
    torch.save(bagnet.create_model("bagnet_tiny").state_dict(), raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    cfg = _weights.PretrainedCfg(url=f"https://example.invalid/bagnet_tiny-{digest[:8]}.pth", sha256=digest[:8],
                                 img_size=IMG_SIZE)
    monkeypatch.setitem(_weights._PRETRAINED, ("bagnet_tiny", "testnet"), cfg)
    monkeypatch.setattr(_factory, "IMAGENET_MODEL", ("bagnet_tiny", "testnet"))

    def install():
        cached = _weights.cached_path(cfg.url)
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(raw.read_bytes())

    return install


def test_demo_uses_the_imagenet_model_only_once_it_is_cached_and_says_so(tmp_path, capsys, caplog, monkeypatch,
                                                                          cached_imagenet_stand_in):
    caplog.set_level(logging.INFO)

    def download(url, *args, **kwargs):
        raise AssertionError(f"the demo tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    args = ("--show", "1", "--top", "1", "--res", "native", "--max-images", "1")
    code, out, err = run_demo(capsys, "--out", tmp_path / "a", *args)
    assert code == 0, err
    default = _factory.DEFAULT_MODEL[0]
    assert out.splitlines()[0].startswith(f"{default} knows ")
    assert "pass --weights testnet once" in caplog.text  # how to get the ImageNet weights
    caplog.clear()
    cached_imagenet_stand_in()
    code, out, err = run_demo(capsys, "--out", tmp_path / "b", *args)
    assert code == 0, err
    assert out.splitlines()[0].startswith("bagnet_tiny knows 1000 classes: tench, goldfish")
    assert "bagnet_tiny with the authors' ImageNet weights (1000 classes), found in the torch hub cache" in caplog.text


def test_with_many_images_the_terminal_counts_the_flagged_ones(tmp_path, tiny_model_file, capsys):
    from PIL import Image

    from .conftest import random_image

    model = bagnet.load_model(tiny_model_file)
    # A threshold above any possible score: every image is flagged.
    path = bagnet.save_model_file(tmp_path / "strict.pt", model,
                                  {**model.pretrained_cfg, "unknown": {"method": "max_softmax", "threshold": 1.5}})
    for i in range(3):
        Image.fromarray(random_image(IMG_SIZE, 60, seed=i)).save(tmp_path / f"photo{i}.png")
    code, out, err = run_demo(capsys, "--weights", path, "--data", tmp_path, "--out", tmp_path / "out",
                              "--show", "1", "--res", "native")
    assert code == 0, err
    assert f"3 of 3 images: {MESSAGE}" in out.splitlines()
    page = (tmp_path / "out" / "report.html").read_text()
    assert "3 images of 3 flagged" in page and page.count("<p class=unknown>") == 1  # one card shown


def test_every_sample_photo_says_it_is_none_of_the_classes_whatever_the_model_flags(tmp_path, capsys):
    """The samples' subjects are known: each card and terminal line says whether the model's
    classes can name it, also where the model's own check does not flag it."""
    names = ["tabby", "dog", "tea", "rocket"]  # 'tabby' is a right answer for chelsea (a cat)
    torch.manual_seed(4)
    path = bagnet.save_model_file(tmp_path / "m.pt", bagnet.create_model("bagnet_tiny", num_classes=4),
                                  {"classes": names, "img_size": IMG_SIZE})
    code, out, err = run_demo(capsys, "--weights", path, "--out", tmp_path, "--show", len(SAMPLE_NAMES),
                              "--top", "1", "--res", "native")
    assert code == 0, err
    per_image = {line.split(":")[0]: line for line in out.splitlines()[2:-1]}
    shown = cards((tmp_path / "report.html").read_text())
    for name in SAMPLE_NAMES:
        if name == "chelsea":
            assert "right answers among this model's classes: tabby" in per_image[name]
            assert "<p class=note>sample photo: a cat; right answers among this model&#x27;s classes: tabby" in shown[name]
        else:
            kind = "drawing" if name == "golf_ball" else "photo"
            assert "none of the 4 classes this model knows]" in per_image[name], per_image[name]
            assert re.search(rf"<p class=unknown>sample {kind}: [^<]*, none of the 4 classes this model knows</p>",
                             shown[name]), name


def test_scale_fixes_the_colour_scale_of_every_figure(tmp_path, tiny_model_file, capsys, monkeypatch):
    from bagnet.explain import Explanation

    seen = []
    plot = Explanation.plot

    def recording(self, **kwargs):
        fig, axes = plot(self, **kwargs)
        seen.append([ax.images[0].get_clim() for ax in axes[1:]])
        return fig, axes

    monkeypatch.setattr(Explanation, "plot", recording)
    code, _, err = run_demo(capsys, "--weights", tiny_model_file, "--out", tmp_path, "--show", "3", "--res", "native",
                              "--scale", "0.5")
    assert code == 0, err
    assert len(seen) == 3 and all(clim == (-0.5, 0.5) for maps in seen for clim in maps)
    seen.clear()
    assert run_demo(capsys, "--weights", tiny_model_file, "--out", tmp_path / "b", "--show", "2", "--res", "native")[0] == 0
    assert len(seen) == 2 and all(len(set(maps)) == 1 for maps in seen)  # one scale per image ...
    assert seen[0][0] != seen[1][0]  # ... set by that image
    code, _, err = run_demo(capsys, "--weights", tiny_model_file, "--out", tmp_path / "c", "--scale", "-2")
    assert code == 1 and err.count("\n") == 1 and "--scale takes 'image' or a positive number" in err
    assert not (tmp_path / "c").exists()
