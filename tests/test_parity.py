"""What is served is what was measured: the same 200 images through `bagnet eval`, `explain`,
the explorer, `bagnet certify`'s clean prediction and ONNX Runtime get the same top-1.

Every path prepares images with bagnet's one preprocessing; before it, eval centre-cropped
while the others resized the whole image with their own code, and 21 of 300 predictions
differed. The images are scikit-image's sample photos cut, scaled and stretched into 200
photos of many sizes and shapes (square, 3:2, portrait, panoramas wider than 2:1, a few large
JPEGs that are decoded at a reduced scale), in class folders named after the default
model's classes.
"""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import bagnet
from bagnet.cli.main import main

N = 200


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    data = pytest.importorskip("skimage.data")
    sources = [np.asarray(Image.fromarray(getattr(data, n)()).convert("RGB"))
               for n in ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "page", "text")]
    model = bagnet.create_model("bagnet33_w25", pretrained="imagenette")
    classes = model.pretrained_cfg["classes"]
    root = tmp_path_factory.mktemp("parity")
    rng = np.random.default_rng(0)
    for i in range(N):
        src = sources[i % len(sources)]
        h, w = src.shape[:2]
        ch, cw = int(h * rng.uniform(0.4, 1.0)), int(w * rng.uniform(0.4, 1.0))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = Image.fromarray(src[y:y + ch, x:x + cw])
        if i % 25 == 7:  # a large photo: decoded at a reduced scale, then box-filtered
            size, fmt = (2600, 1800), "JPEG"
        else:
            side = int(rng.integers(120, 420))
            aspect = rng.choice([1.0, 1.5, 0.66, 2.6, 0.35, 1.33])  # 2.6 and 0.35: long side cut to 2x
            size = (max(40, int(side * aspect)), side) if aspect >= 1 else (side, max(40, int(side / aspect)))
            fmt = "PNG" if i % 3 == 0 else "JPEG"
        img = crop.resize(size, Image.Resampling.BILINEAR)
        if i % 2:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        folder = root / "val" / classes[i % len(classes)]
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{i:03d}.{'png' if fmt == 'PNG' else 'jpg'}", fmt, quality=90)
    return root, model


def _by_path(rows, key):
    return {r["path"]: r[key] for r in rows}


def test_every_path_predicts_the_same_top1(photos, tmp_path):
    root, model = photos
    names = model.pretrained_cfg["classes"]
    val = root / "val"
    files = sorted(p.relative_to(val).as_posix() for p in val.rglob("*.*"))
    assert len(files) == N

    # bagnet eval, batched, with its per-image predictions
    assert main(["eval", "--data", str(root), "--weights", "imagenette", "--workers", "0", "--batch-size", "16",
                 "--predictions", str(tmp_path / "eval.csv")]) == 0
    with open(tmp_path / "eval.csv", newline="") as f:
        evaluated = _by_path(list(csv.DictReader(f)), "prediction")
    assert sorted(evaluated) == files

    # bagnet certify's clean prediction (the undefended model, float64 evidence means)
    assert main(["certify", "--data", str(root), "--weights", "imagenette", "--defense", "none", "--workers", "0",
                 "--batch-size", "16", "--out", str(tmp_path / "cert")]) == 0
    per_image = json.loads((tmp_path / "cert" / "per_image.json").read_text())["images"]
    certified = {r["path"]: names[r["results"][0]["prediction"]] for r in per_image}
    assert sorted(certified) == files

    from bagnet.app import Explorer
    from bagnet.data.transforms import Preprocessing
    from bagnet.explain import EvidenceMapper, explain

    explorer = Explorer(model)
    mapper = EvidenceMapper(model, stride="native")
    pre = Preprocessing.from_cfg(model.pretrained_cfg)
    onnx_session = _onnx_session(model, tmp_path)
    explained, explored, onnx = {}, {}, {}
    for rel in files:
        path = val / rel
        explained[rel] = names[explain(model, path, stride="native", mapper=mapper, classes=[0], k=1).predictions[0].index]
        explored[rel] = names[int(explorer.explore(path.read_bytes(), rel).logits.argmax())]
        (logits,) = onnx_session.run(None, {"image": pre(path)[None].numpy()})
        onnx[rel] = names[int(logits.argmax())]

    for other, what in ((explained, "explain"), (explored, "the explorer"), (certified, "certify")):
        differ = [f for f in files if other[f] != evaluated[f]]
        assert not differ, f"{what} and eval disagree on {len(differ)} images, e.g. {differ[:3]}"
    agree = np.mean([onnx[f] == evaluated[f] for f in files])
    assert agree >= 0.995, f"ONNX Runtime agrees with eval on {100 * agree:.1f}% of the images"
    # the photos are varied enough for this to mean something: several classes are predicted
    assert len(set(evaluated.values())) >= 3


def _onnx_session(model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from bagnet.export import export_onnx

    path = export_onnx(model, tmp_path / "m.onnx")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_the_input_is_the_same_tensor_on_every_path(photos):
    """Not only the same class: the same pixels. The dataset of eval/certify, explain's and
    the explorer's preparation and a file's bytes give bit-identical inputs."""
    root, model = photos
    from bagnet.app import Explorer
    from bagnet.data.folder import ImageFolder
    from bagnet.data.transforms import Preprocessing
    from bagnet.explain import preprocess

    pre = Preprocessing.from_cfg(model.pretrained_cfg)
    dataset = ImageFolder(root / "val", transform=pre)
    explorer = Explorer(model)
    for i in range(0, N, 9):
        path = dataset.samples[i][0]
        x = dataset[i][0]
        assert torch.equal(preprocess(path, model.pretrained_cfg)[0], x)
        assert torch.equal(explorer.prepare(path)[0], x)
        with open(path, "rb") as f:
            assert torch.equal(pre.prepare(f.read()).input, x)
