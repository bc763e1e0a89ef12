"""Every file `bagnet train` writes loads through every command, with or without --model.

model.pt, last.pt, best.pt and the run folder of a BagNet run and of a torchvision run
(mobilenet_v3_small, whose classifier is ``classifier.3``, not ``fc``) are given to eval,
explain, serve, analyze and bench. One epoch makes all three files hold the same weights,
so every command must give the same numbers for each of them.
"""

import json

import pytest
import torch

import bagnet
from bagnet.cli.main import build_parser, main
from bagnet.testing import make_image_folder
from bagnet.train import TrainConfig, train

SOURCES = ["model.pt", "last.pt", "best.pt", "."]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("loads")
    make_image_folder(root, per_class=4, size=40, splits=("train",))
    make_image_folder(root, per_class=2, size=40, splits=("val",), seed=1)
    return root


def _train(data, out, model, **extra):
    cfg = TrainConfig(data=str(data), out=str(out), model=model, img_size=32, epochs=1, batch_size=6, lr=0.05,
                      workers=0, progress=False, device="cpu", **extra)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        train(cfg)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    return out


@pytest.fixture(scope="module")
def bagnet_run(data, tmp_path_factory):
    # With an EMA: model.pt ships the EMA weights, and so must last.pt/best.pt give them.
    return _train(data, tmp_path_factory.mktemp("runs") / "tiny", "bagnet_tiny", ema=True, ema_decay=0.5)


@pytest.fixture(scope="module")
def torchvision_run(data, tmp_path_factory):
    return _train(data, tmp_path_factory.mktemp("runs") / "mnv3", "mobilenet_v3_small")


def _source(run, name):
    return str(run if name == "." else run / name)


def _model_args(run, name, with_model):
    return ["--weights", _source(run, name)] + (["--model", json.loads((run / "config.json").read_text())["model"]]
                                                if with_model else [])


@pytest.mark.parametrize("with_model", [False, True], ids=["alone", "with-model"])
@pytest.mark.parametrize("run_name", ["bagnet_run", "torchvision_run"])
def test_eval(request, run_name, with_model, data, tmp_path, capsys):
    run = request.getfixturevalue(run_name)
    results = []
    for name in SOURCES:
        out = tmp_path / f"{name.replace('.', 'dir')}.json"
        rc = main(["eval", "--data", str(data), *_model_args(run, name, with_model), "--workers", "0",
                   "--batch-size", "4", "--device", "cpu", "--json", str(out)])
        assert rc == 0, capsys.readouterr().err
        r = json.loads(out.read_text())
        assert r["images"] == 6
        results.append((r["top1"], r["top5"], r["confusion"]))
    assert all(r == results[0] for r in results)  # one set of weights in all four


@pytest.mark.parametrize("with_model", [False, True], ids=["alone", "with-model"])
def test_explain(bagnet_run, data, with_model, tmp_path, capsys):
    image = str(next((data / "val" / "square").iterdir()))
    records = []
    for name in SOURCES:
        out = tmp_path / name.replace(".", "dir")
        rc = main(["explain", image, *_model_args(bagnet_run, name, with_model), "--out", str(out), "--device", "cpu",
                   "-k", "2"])
        assert rc == 0, capsys.readouterr().err
        record = json.loads(next(out.glob("*.json")).read_text())
        records.append([(p["index"], round(p["probability"], 5)) for p in record["predictions"]])
    assert all(r == records[0] for r in records)


@pytest.mark.parametrize("with_model", [False, True], ids=["alone", "with-model"])
def test_serve(bagnet_run, data, with_model):
    from bagnet.app import Explorer
    from bagnet.cli.demo import resolve_demo_model  # what `bagnet serve` loads its model with

    image = next((data / "val" / "circle").iterdir())
    logits = []
    for name in SOURCES:
        args = build_parser().parse_args(["serve", *_model_args(bagnet_run, name, with_model)])
        explorer = Explorer(resolve_demo_model(args))
        assert explorer.classes == ["circle", "square", "stripes"] and explorer.img_size == 32
        logits.append(explorer.explore(image).logits)
    for x in logits[1:]:
        torch.testing.assert_close(x, logits[0])


@pytest.mark.parametrize("with_model", [False, True], ids=["alone", "with-model"])
@pytest.mark.parametrize("run_name", ["bagnet_run", "torchvision_run"])
def test_analyze(request, run_name, with_model, data, tmp_path, capsys):
    run = request.getfixturevalue(run_name)
    model = json.loads((run / "config.json").read_text())["model"]
    tops = []
    for name in SOURCES:
        spec = f"{model}@{_source(run, name)}" if with_model else _source(run, name)
        specs = ["--bagnet", f"M={spec}"] if run_name == "bagnet_run" else [
            "--bagnet", "bagnet_tiny@random", "--reference", f"M={spec}"]
        out = tmp_path / name.replace(".", "dir")
        rc = main(["analyze", "accuracy", "--data", str(data), *specs, "--out", str(out), "--device", "cpu",
                   "--batch-size", "8"])
        assert rc == 0, capsys.readouterr().err
        rows = json.loads((out / "accuracy.json").read_text())["models"]
        tops.append(next(r["top1"] for r in rows if r["label"] == "M"))
    assert all(t == tops[0] for t in tops)


@pytest.mark.parametrize("with_model", [False, True], ids=["alone", "with-model"])
@pytest.mark.parametrize("run_name", ["bagnet_run", "torchvision_run"])
def test_bench(request, run_name, with_model, tmp_path, capsys):
    run = request.getfixturevalue(run_name)
    model = json.loads((run / "config.json").read_text())["model"]
    params = []
    for name in SOURCES:
        entry = f"{model}@{_source(run, name)}" if with_model else _source(run, name)
        out = tmp_path / "bench.json"
        rc = main(["bench", "--models", entry, "--mode", "plain", "--batch-size", "2", "--img-size", "32",
                   "--repeats", "1", "--device", "cpu", "--json", str(out)])
        assert rc == 0, capsys.readouterr().err
        params.append(json.loads(out.read_text())["results"][0]["params_m"])
    # The head has 3 outputs, as in the file (a default 1000-class head would be larger).
    want = sum(p.numel() for p in bagnet.load_model(run / "model.pt").parameters()) / 1e6
    assert params == [pytest.approx(want)] * len(SOURCES)


def test_training_checkpoints_carry_what_a_model_needs(bagnet_run):
    from_model = bagnet.load_model(bagnet_run / "model.pt")
    for name in ("last.pt", "best.pt"):
        m = bagnet.load_model(bagnet_run / name)
        cfg = m.pretrained_cfg
        assert m.model_name == "bagnet_tiny" and m.num_classes == 3
        assert cfg["classes"] == ["circle", "square", "stripes"] and cfg["img_size"] == 32
        assert cfg["weights"] == "ema" and cfg["mean"] == from_model.pretrained_cfg["mean"]
        for k, v in from_model.state_dict().items():
            assert torch.equal(v, m.state_dict()[k]), k  # the EMA weights, as shipped in model.pt


@pytest.mark.parametrize("with_model", [False, True], ids=["alone", "with-model"])
def test_demo(bagnet_run, data, with_model, tmp_path, capsys):
    lines = []
    for name in SOURCES:
        out = tmp_path / name.replace(".", "dir")
        rc = main(["demo", "--data", str(data / "val"), *_model_args(bagnet_run, name, with_model), "--out", str(out),
                   "--max-images", "3", "--show", "1", "--top", "1", "--res", "native", "--device", "cpu"])
        printed = capsys.readouterr()
        assert rc == 0, printed.err
        assert (out / "report.html").is_file()
        lines.append(printed.out.splitlines()[0])  # accuracy on the labelled folder
    assert all(line == lines[0] for line in lines), lines
