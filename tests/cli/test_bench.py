import json
import statistics

import pytest
import torch

from bagnet.cli.main import main
from bagnet.models._profile import count_macs


def test_bench_json_and_ratios(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--models", "bagnet_tiny@random,resnet50@random", "--mode", "plain,fused", "--batch-size", "2",
            "--img-size", "40", "--repeats", "3", "--threads", "1", "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["format"] == "bagnet-bench/1"
    cfg = report["config"]
    assert (cfg["batch_size"], cfg["img_size"], cfg["repeats"], cfg["threads"]) == (2, 40, 3, 1)
    rows = {(r["model"], r["mode"]): r for r in report["results"]}
    assert set(rows) == {(m, mode) for m in ("bagnet_tiny@random", "resnet50@random") for mode in ("plain", "fused")}
    for (_name, mode), r in rows.items():
        assert len(r["seconds"]) == 3 and all(s > 0 for s in r["seconds"])
        # every derived number is recomputed here from the raw timings
        median = statistics.median(2 / s for s in r["seconds"])
        assert r["images_per_s"] == pytest.approx(median)
        assert r["ratio_to_resnet50"] == pytest.approx(median / statistics.median(
            2 / s for s in rows[("resnet50@random", mode)]["seconds"]))
        assert r["gmacs_per_s"] == pytest.approx(median * r["gmacs_per_image"])
        assert r["peak_memory_mb"] is None or r["peak_memory_mb"] >= 0
        assert r["exact"] and r["bn_folded"] == (mode == "fused")
        assert f"{r['images_per_s']:.2f}" in printed
    assert rows[("resnet50@random", "fused")]["ratio_to_resnet50"] == 1.0

    # ResNet-50's multiply-adds at 40 px, counted by hand: conv1 to 20x20, max-pool to 10x10,
    # stages at 10, 5, 3, 2 px; folding BatchNorm changes none of them
    def stage(side_in, side, cin, planes, blocks, stride):
        out = 4 * planes
        macs = side_in**2 * cin * planes + side**2 * (planes * planes * 9 + planes * out) + side**2 * cin * out
        return macs + (blocks - 1) * side**2 * (out * planes + planes * planes * 9 + planes * out)

    expected = (20 * 20 * 64 * 3 * 49 + stage(10, 10, 64, 64, 3, 1) + stage(10, 5, 256, 128, 4, 2)
                + stage(5, 3, 512, 256, 6, 2) + stage(3, 2, 1024, 512, 3, 2) + 2048 * 1000)
    assert rows[("resnet50@random", "fused")]["gmacs_per_image"] * 1e9 == pytest.approx(expected)
    with torch.device("meta"):
        import bagnet

        tiny = bagnet.create_model("bagnet_tiny")
    assert rows[("bagnet_tiny@random", "plain")]["gmacs_per_image"] * 1e9 == count_macs(tiny, 40)
    assert rows[("bagnet_tiny@random", "fused")]["gmacs_per_image"] < rows[("bagnet_tiny@random", "plain")]["gmacs_per_image"]


def test_bench_without_resnet_has_no_ratio(tmp_path):
    out = tmp_path / "b.json"
    assert main(["bench", "--models", "bagnet_tiny@random", "--mode", "bf16", "--batch-size", "1", "--img-size", "24",
                 "--repeats", "1", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert row["ratio_to_resnet50"] is None and row["exact"] is False


@pytest.mark.parametrize(
    "args, message",
    [
        (["--models", "resnet9000"], "unknown model 'resnet9000'"),
        (["--models", "bagnet_tiny@random", "--mode", "turbo"], "unknown --mode 'turbo'"),
        (["--models", "bagnet_tiny@random", "--img-size", "8"], "bagnet_tiny@random sees 9x9 patches"),
        (["--models", "vgg11@random", "--img-size", "16"], "vgg11@random cannot take 16 px images"),
        (["--models", "bagnet_tiny@random", "--repeats", "0"], "--repeats and --warmup must be at least 1"),
        (["--models", "bagnet_tiny@random,bagnet_tiny@random"], "names something twice"),
        # a bare name means the published weights, as in every command: none exist for this one
        (["--models", "bagnet_tiny"], "bagnet_tiny has no published weights"),
    ],
)
def test_bench_bad_input_is_one_line_error(args, message, capsys, tmp_path):
    out = tmp_path / "never.json"
    assert main(["bench", *args, "--batch-size", "1", "--json", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not out.exists()
