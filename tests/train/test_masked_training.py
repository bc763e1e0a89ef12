"""`bagnet train --mask-patches N`: PatchCleanser's masked training (Cutout with the masks of
its mask set), recorded in config.json and the model file."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import bagnet
from bagnet.cli.main import main
from bagnet.data.folder import RandomMasks, train_transform
from bagnet.robust import mask_set
from bagnet.train import train
from bagnet.train.config import train_masks
from bagnet.train.loop import build_data

from .conftest import tiny_config


def _box(masked):
    """``(top, left, rows, cols)`` of the one rectangle where ``masked [H, W]`` is True."""
    rows, cols = masked.any(1).nonzero()[:, 0], masked.any(0).nonzero()[:, 0]
    top, left = int(rows[0]), int(cols[0])
    h, w = int(rows[-1]) - top + 1, int(cols[-1]) - left + 1
    assert int(masked.sum()) == h * w  # a whole rectangle, nothing else
    return top, left, h, w


@pytest.mark.parametrize("size,mask", [((32, 32), (8, 8)), ((20, 30), (7, 11)), ((9, 9), (9, 4))])
def test_one_mask_is_a_whole_rectangle_of_its_size_anywhere_inside(size, mask):
    h, w = size
    masks = RandomMasks(1, mask, fill=-5.0)
    torch.manual_seed(0)
    seen_top, seen_left = set(), set()
    for _ in range(400):
        out = masks(torch.ones(3, h, w))
        masked = out[0] == -5.0
        assert torch.equal(masked, out[1] == -5.0) and torch.equal(masked, out[2] == -5.0)
        top, left, mh, mw = _box(masked)
        assert (mh, mw) == mask
        seen_top.add(top)
        seen_left.add(left)
    # every position of [0, h - rows] x [0, w - cols], and none outside, was drawn
    assert seen_top == set(range(h - mask[0] + 1)) and seen_left == set(range(w - mask[1] + 1))


def test_positions_follow_the_global_generator_and_two_masks_may_overlap():
    masks = RandomMasks(2, (5, 6))
    torch.manual_seed(3)
    corners = masks.positions(20, 16)
    torch.manual_seed(3)
    out = masks(torch.ones(1, 20, 16))
    want = torch.ones(1, 20, 16)
    for top, left in corners:
        assert 0 <= top <= 15 and 0 <= left <= 10
        want[:, top:top + 5, left:left + 6] = 0
    assert torch.equal(out, want)
    assert RandomMasks(0, 5)(torch.ones(1, 4, 4)).eq(1).all()
    with pytest.raises(ValueError, match="count >= 0 and mask sides >= 1"):
        RandomMasks(-1, 5)


def test_the_training_transform_masks_after_normalizing_with_the_mean_colour():
    image = Image.fromarray(np.full((40, 40, 3), 255, np.uint8))
    tf = train_transform(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), masks=RandomMasks(1, (8, 8)))
    assert repr(tf.transforms[-1]) == "RandomMasks(count=1, size=(8, 8), fill=0)"
    torch.manual_seed(0)
    out = tf(image)  # white is (1 - 0.5) / 0.25 = 2 once normalized; the mask writes 0, the mean
    assert out.shape == (3, 32, 32) and set(out.unique().tolist()) == {0.0, 2.0}
    assert _box(out[0] == 0)[2:] == (8, 8)


def test_training_with_masks_runs_and_records_them(tiny_data, tmp_path):
    out = tmp_path / "r"
    cfg = tiny_config(tiny_data, out, epochs=1, mask_patches=2, mask_sticker="4")
    # 32 px crops, a 4 px sticker, 6 masks per axis: stride ceil(29 / 6) = 5, masks of 4 + 5 - 1 = 8 px
    assert mask_set(32, 4, 6).mask_size == (8, 8)
    want = {"masks": 2, "mask_size": [8, 8], "sticker": "4", "sticker_px": 4, "cleanser_masks": 6,
            "fill": "mean (0 in the normalized input)"}
    assert train_masks(cfg) == want
    data = build_data(cfg, [0.5] * 3, [0.25] * 3)
    last = data.train.transform.transforms[-1]
    assert isinstance(last, RandomMasks) and last.count == 2 and last.size == (8, 8)
    torch.manual_seed(0)
    x, _ = data.train[0]
    zero = x == 0
    assert torch.equal(zero[0], zero[1]) and 64 <= int(zero[0].sum()) <= 128  # two 8 x 8 masks, maybe overlapping
    assert not any(isinstance(t, RandomMasks) for t in getattr(data.val.transform, "transforms", []))

    train(cfg)
    config = json.loads((out / "config.json").read_text())
    assert (config["mask_patches"], config["mask_sticker"], config["cleanser_masks"]) == (2, "4", 6)
    model = bagnet.load_model(out / "model.pt")
    assert model.pretrained_cfg["train_masking"] == want
    assert model.pretrained_cfg["config"]["mask_patches"] == 2
    plain = tmp_path / "plain"
    train(tiny_config(tiny_data, plain, epochs=1))
    assert "train_masking" not in bagnet.load_model(plain / "model.pt").pretrained_cfg


@pytest.mark.parametrize("extra,message", [
    (["--mask-patches", "-1"], "--mask-patches must be 0 or more, got -1"),
    (["--mask-patches", "2", "--mask-sticker", "40"],
     "--mask-sticker 40 with --cleanser-masks 6 at --img-size 32: a 40 x 40 patch does not fit in a 32 x 32 image"),
    (["--mask-patches", "2", "--mask-sticker", "5%", "--cleanser-masks", "1"],
     "an 8 px sticker with 1 mask per axis needs a 32x32 px mask, the whole 32x32 image"),
    (["--mask-patches", "2", "--cleanser-masks", "0"], "--cleanser-masks must be at least 1, got 0"),
])
def test_bad_mask_options_are_one_line(tiny_data, tmp_path, capsys, extra, message):
    rc = main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--model", "bagnet_tiny",
               "--img-size", "32", "--epochs", "1", "--workers", "0", "--device", "cpu", *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r" / "last.pt").exists()
