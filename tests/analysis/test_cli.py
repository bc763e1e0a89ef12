"""``bagnet analyze``: sub-commands, ``all`` from a config file, resuming, the report, bad input."""

import json
import re

import pytest
import torch

import bagnet
from bagnet.cli.main import main

from .conftest import CLASSES, IMG, tiny_bagnet, tiny_resnet


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    b = tiny_bagnet(9)
    b.model_name, b.model_args = "bagnet_tiny", {"num_classes": 3}
    bagnet.save_model_file(d / "b9.pt", b, {"classes": list(CLASSES), "img_size": IMG})
    torch.save(tiny_resnet().state_dict(), d / "r18.pt")  # a plain state dict: name the model
    return d


def _config(tmp_path, folder, models, **experiments):
    cfg = {
        "data": str(folder), "out": "out", "batch_size": 16, "max_images": 6, "bootstrap_resamples": 200,
        "bagnets": ["B9=" + str(models / "b9.pt")],
        "references": [{"label": "R18", "model": "resnet18", "weights": str(models / "r18.pt")}],
        "experiments": {"interactions": {"n_patches": 2, "gap": 9},
                        "spatial-sensitivity": {"max_k": 4, "k_step": 2, "ig_steps": 2, "max_images": 2},
                        "class-patches": {"top": 2, "classes": ["square"]}, "misclassified": {"count": 2}, **experiments},
    }
    path = tmp_path / "analysis.json"
    path.write_text(json.dumps(cfg))
    return path


def test_all_writes_every_result_and_a_self_contained_report(tmp_path, folder, models, capsys, caplog):
    cfg = _config(tmp_path, folder, models)
    assert main(["analyze", "all", "--config", str(cfg)]) == 0
    out = tmp_path / "out"  # relative to the config file
    names = ["accuracy", "patch_size", "logit_correlation", "error_distribution", "interactions", "spatial_sensitivity"]
    for n in names:
        d = json.loads((out / f"{n}.json").read_text())
        assert d["meta"]["step_key"] and d["meta"]["img_size"] == IMG
        assert (out / f"{n}.png").stat().st_size > 1000
    figures = [f["png"] for n in ("class_patches", "misclassified")
               for f in json.loads((out / f"{n}.json").read_text())["figures"]]
    assert len(figures) == 1 + 2 and all((out / f).is_file() for f in figures)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(names) + len(figures)
    assert not re.search(r"<img[^>]+src=['\"](?!data:)", html)  # nothing loaded from outside the file
    md = (out / "summary.md").read_text()
    assert "## Spatial sensitivity" in md and "| B9 |" in md
    # Every table shows its intervals: "value [low, high]", and says how they were computed.
    assert re.search(r"\| \d+\.\d \[\d+\.\d, \d+\.\d\] \|", md) and "200 resamples (seed 0)" in md
    assert "heatmap minus other ranking" in md and "gradcam R18" in md and "p (McNemar)" in md
    spatial = json.loads((out / "spatial_sensitivity.json").read_text())
    assert [m["label"] for m in spatial["models"]] == ["R18", "B9"]  # both directions by default
    assert spatial["meta"]["bootstrap"]["resamples"] == 200 and (out / spatial["per_image_file"]).is_file()
    assert json.loads((out / "config.json").read_text())["bagnets"][0]["label"] == "B9"
    stamps = {n: (out / f"{n}.json").stat().st_mtime_ns for n in names}

    # Second run: every step is up to date; a changed option recomputes only its step.
    cfg = _config(tmp_path, folder, models, interactions={"n_patches": 3, "gap": 9})
    caplog.set_level("INFO")
    assert main(["analyze", "all", "--config", str(cfg)]) == 0
    changed = {n for n in names if (out / f"{n}.json").stat().st_mtime_ns != stamps[n]}
    assert changed == {"interactions"}
    assert json.loads((out / "interactions.json").read_text())["n_patches"] == 3
    assert "up to date" in caplog.text
    assert main(["analyze", "all", "--config", str(cfg), "--force", "--only", "accuracy"]) == 0
    assert (out / "accuracy.json").stat().st_mtime_ns != stamps["accuracy"]


def test_single_experiment_prints_a_table(tmp_path, folder, models, capsys):
    rc = main(["analyze", "logit-correlation", "--data", str(folder), "--bagnet", f"B9={models / 'b9.pt'}",
               "--reference", f"R18=resnet18@{models / 'r18.pt'}", "--out", str(tmp_path / "o")])
    assert rc == 0
    out = capsys.readouterr().out
    assert re.search(r"B9\s+9\s+R18\s+-?\d\.\d{3}", out)
    assert (tmp_path / "o" / "logit_correlation.json").is_file() and (tmp_path / "o" / "report.html").is_file()
    assert main(["analyze", "report", "--out", str(tmp_path / "o")]) == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["analyze", "accuracy", "--data", "/nonexistent", "--bagnet", "bagnet_tiny@random"], "does not exist"),
        (["analyze", "interactions", "--data", "{folder}", "--reference", "resnet18@random"],
         "needs at least one --bagnet"),
        (["analyze", "accuracy", "--data", "{folder}", "--bagnet", "resnet18@random"], "is not one"),
        (["analyze", "accuracy", "--data", "{folder}", "--bagnet", "bagnet_tiny"], "no published weights"),
        (["analyze", "accuracy", "--data", "{folder}", "--bagnet", "a=bagnet_tiny@random", "--reference",
          "a=resnet18@random"],
         "unique"),
        (["analyze", "interactions", "--data", "{folder}", "--bagnet", "bagnet_tiny@random", "--patch-size", "big"],
         "whole number"),
        (["analyze", "all", "--config", "{bad_config}"], "unknown experiment"),
        (["analyze", "all", "--config", "{bad_json}"], "not valid JSON"),
        # an attribution method's option without that method would be silently ignored
        (["analyze", "spatial-sensitivity", "--data", "{folder}", "--bagnet", "bagnet_tiny@random", "--reference",
          "resnet18@random", "--methods", "saliency", "--ig-steps", "5"],
         "spatial-sensitivity: ig_steps would be ignored: it only acts when methods include integrated_gradients"),
        (["analyze", "all", "--config", "{ignored_option}"],
         "gradcam_layer would be ignored: it only acts when methods include gradcam"),
    ],
)
def test_bad_input_is_one_line(tmp_path, folder, argv, message, capsys):
    (tmp_path / "bad.json").write_text(json.dumps({"data": str(folder), "bagnets": ["bagnet_tiny"],
                                                   "experiments": {"gradcam": {}}}))
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "ignored.json").write_text(json.dumps({
        "data": str(folder), "bagnets": ["bagnet_tiny@random"], "references": ["resnet18@random"],
        "experiments": {"spatial-sensitivity": {"methods": "saliency,lrp", "gradcam_layer": "layer4"}}}))
    argv = [a.format(folder=folder, bad_config=tmp_path / "bad.json", bad_json=tmp_path / "broken.json",
                     ignored_option=tmp_path / "ignored.json")
            for a in argv]
    assert main([*argv, "--out", str(tmp_path / "o")] if argv[1] != "all" else argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_progress_in_a_log_file_is_plain_lines(tmp_path, folder, models):
    """stderr redirected to a file: progress lines as `bagnet train` writes them, no tqdm
    carriage-return frames."""
    import os
    import subprocess
    import sys

    log = tmp_path / "analyze.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BAGNET_PROGRESS": "1"}
    with open(log, "w") as f:
        done = subprocess.run(
            [sys.executable, "-m", "bagnet", "analyze", "accuracy", "--data", str(folder), "--bagnet",
             "B9=" + str(models / "b9.pt"), "--batch-size", "1", "--out", str(tmp_path / "out"), "--threads", "1"],
            stdout=subprocess.DEVNULL, stderr=f, env=env, timeout=300, check=False,
        )
    text = log.read_text()
    assert done.returncode == 0, text
    assert "\r" not in text
    lines = [line for line in text.splitlines() if line.startswith("outputs of B9: ")]
    n = 3 * len(CLASSES)  # val images, one per batch
    assert lines and lines[-1].startswith(f"outputs of B9: {n}/{n}, ")


def test_heatmap_dtype_is_recorded_and_refused_when_unknown(tmp_path, folder, models, capsys):
    common = ["analyze", "misclassified", "--data", str(folder), "--bagnet", f"B9={models / 'b9.pt'}", "--count", "1",
              "--max-images", "6"]
    assert main([*common, "--dtype", "bf16", "--out", str(tmp_path / "o")]) == 0
    result = json.loads((tmp_path / "o" / "misclassified.json").read_text())
    assert result["dtype"] == "bfloat16" and result["meta"]["options"]["heatmap_dtype"] == "bfloat16"
    capsys.readouterr()
    assert main([*common, "--dtype", "double-ish", "--out", str(tmp_path / "p")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--dtype 'double-ish' is not one of auto" in err
    assert not (tmp_path / "p" / "misclassified.json").exists()


def test_new_bootstrap_settings_recompute_intervals_only(tmp_path, folder, models, caplog):
    """A finished run asked for other bootstrap settings: interactions and spatial sensitivity
    get new intervals from their saved per-image results (no masking again), the others from
    the cached outputs; the command-line flags override the config."""
    cfg = _config(tmp_path, folder, models)
    only = "interactions,spatial-sensitivity"
    assert main(["analyze", "all", "--config", str(cfg), "--only", only]) == 0
    out = tmp_path / "out"
    before = json.loads((out / "spatial_sensitivity.json").read_text())
    slope_ci = json.loads((out / "interactions.json").read_text())["models"][0]["slope_ci"]
    caplog.set_level("INFO")
    assert main(["analyze", "all", "--config", str(cfg), "--only", only, "--bootstrap-resamples", "150",
                 "--bootstrap-seed", "3"]) == 0
    assert caplog.text.count("intervals recomputed from the saved per-image results") == 2
    after = json.loads((out / "spatial_sensitivity.json").read_text())
    assert after["meta"]["bootstrap"]["resamples"] == 150 and after["bootstrap"]["seed"] == 3
    r_before, r_after = before["models"][0]["curves"]["random"], after["models"][0]["curves"]["random"]
    assert r_after["prob_drop"] == r_before["prob_drop"] and len(r_after["prob_drop_ci"]) == 3  # 2 images only
    inter = json.loads((out / "interactions.json").read_text())
    assert inter["bootstrap"]["resamples"] == 150 and inter["models"][0]["slope_ci"] != slope_ci
    caplog.clear()
    assert main(["analyze", "all", "--config", str(cfg), "--only", only, "--bootstrap-resamples", "150",
                 "--bootstrap-seed", "3"]) == 0
    assert caplog.text.count("up to date") == 2
    assert main(["analyze", "accuracy", "--data", str(folder), "--bagnet", f"B9={models / 'b9.pt'}",
                 "--bootstrap-resamples", "0", "--out", str(tmp_path / "o")]) == 1
