"""Model specs, class mapping, model loading, cached outputs and the small numeric helpers."""

import numpy as np
import pytest
import torch
import torchvision

import bagnet
from bagnet.analysis import LogitCache, ModelSpec, parse_model_spec, pearson, predictions
from bagnet.analysis._cells import cell_sums
from bagnet.analysis._classifier import build_model, load_classifier
from bagnet.analysis._output import read_json, write_json

from .conftest import CLASSES


def test_parse_model_spec(tmp_path):
    f = tmp_path / "m.pt"
    f.write_bytes(b"x")
    assert parse_model_spec("bagnet33_slim") == ModelSpec("bagnet33_slim", "bagnet33_slim", None)
    assert parse_model_spec("bagnet33_slim@random") == ModelSpec("bagnet33_slim", "bagnet33_slim", "random")
    assert parse_model_spec("R=resnet18@imagenet") == ModelSpec("R", "resnet18", "imagenet")
    assert parse_model_spec(f"B={f}") == ModelSpec("B", None, str(f))
    assert parse_model_spec({"label": "V", "model": "vgg11", "weights": "w.pt"}) == ModelSpec("V", "vgg11", "w.pt")
    with pytest.raises(ValueError, match="unknown keys"):
        parse_model_spec({"model": "vgg11", "weigths": "w.pt"})
    with pytest.raises(ValueError, match="empty"):
        parse_model_spec(" ")
    # Run folders and registered tags name their model, as files do.
    assert parse_model_spec(f"R={tmp_path}") == ModelSpec("R", None, str(tmp_path))
    assert parse_model_spec("imagenette") == ModelSpec("imagenette", None, "imagenette")
    assert build_model(parse_model_spec("imagenette")).model_name == "bagnet33_w25"  # the default model's tag
    # A bare name means the published weights, as in every command; random ones are asked for.
    assert build_model(parse_model_spec("bagnet33_w25")).pretrained_cfg["source"] == "imagenette"
    assert build_model(parse_model_spec("bagnet_tiny@random"), num_classes=3).num_classes == 3
    with pytest.raises(ValueError, match="no published weights.*bagnet_tiny@random"):
        build_model(parse_model_spec("bagnet_tiny"))


def test_torchvision_checkpoints_load(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=3)
    plain = tmp_path / "plain.pt"
    torch.save({"model": {f"module.{k}": v for k, v in net.state_dict().items()}}, plain)
    m = build_model(parse_model_spec(f"resnet18@{plain}"))
    assert m.fc.out_features == 3  # head size read from the checkpoint
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(m.eval()(x), net.eval()(x))
    # A bagnet model file may name a torchvision classifier, with classes and normalization.
    net.model_name, net.model_args = "resnet18", {"num_classes": 3}
    named = bagnet.save_model_file(tmp_path / "named.pt", net, {"classes": list(CLASSES), "mean": [0.5] * 3,
                                                                 "std": [0.25] * 3, "img_size": 64})
    clf = load_classifier(parse_model_spec(str(named)), list(reversed(CLASSES)))
    assert clf.name == "resnet18" and clf.columns.tolist() == [2, 1, 0]
    assert clf.mean.flatten().tolist() == [0.5] * 3
    with pytest.raises(ValueError, match="not 'vgg11'"):
        build_model(parse_model_spec(f"vgg11@{named}"))
    with pytest.raises(ValueError, match="unknown model"):
        build_model(parse_model_spec("no_such_net"))


def test_logit_cache_computes_each_output_once(data, bag9, tmp_path):
    calls = []
    handle = bag9.model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        cache = LogitCache(tmp_path / "c")
        p4 = predictions(bag9, data, 4, batch_size=3, cache=cache)
        p_all = predictions(bag9, data, None, batch_size=3, cache=cache)  # only the 5 others are new
        assert sum(calls) == len(data.order)
        again = LogitCache(tmp_path / "c").get(bag9, data, data.indices(), 3)  # from the .npz file
        assert sum(calls) == len(data.order)
    finally:
        handle.remove()
    # Independent check: the outputs are the model's on the normalized, resized images.
    x = torch.stack([data.dataset[i][0] for i in data.indices()])
    want = bag9.model((x - bag9.mean) / bag9.std).detach().numpy()
    np.testing.assert_allclose(again.logits, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(p_all.logits, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(p4.indices, data.indices(4))
    np.testing.assert_allclose(again.probs().sum(1), 1.0, rtol=1e-5)  # 3 outputs = the 3 classes


def test_cell_sums_and_pearson():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(2, 3, 19, 17, generator=g)
    got = cell_sums(maps, 8)
    assert got.shape == (2, 2, 2)
    for b in range(2):
        for i in range(2):
            for j in range(2):
                want = float(maps[b, :, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8].sum())
                assert abs(float(got[b, i, j]) - want) < 1e-4
    a, c = np.random.default_rng(0).normal(size=(2, 50))
    assert abs(pearson(a, c) - np.corrcoef(a, c)[0, 1]) < 1e-12
    assert np.isnan(pearson(np.ones(5), np.arange(5)))


def test_json_is_atomic_and_strict(tmp_path):
    p = write_json({"x": np.float32(1.5), "nan": float("nan"), "a": np.arange(3)}, tmp_path / "r.json")
    assert read_json(p) == {"x": 1.5, "nan": None, "a": [0, 1, 2]}
    assert [f.name for f in tmp_path.iterdir()] == ["r.json"]
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")
