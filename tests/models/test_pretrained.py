"""Model folders (model.safetensors + config.json), the Hugging Face Hub, and no pickle."""

import json
import shutil
from pathlib import Path

import pytest
import torch

import bagnet
from bagnet.cli.main import main
from bagnet.models import save_model_file, save_pretrained
from bagnet.testing.models import randomize_batchnorm

safetensors_torch = pytest.importorskip("safetensors.torch")

CLASSES = ["n01", "n02", "n03"]
NAMES = ["tench", "springer", "cassette"]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def model():
    m = randomize_batchnorm(bagnet.create_model("bagnet_tiny", num_classes=3), seed=2)
    m.pretrained_cfg = {**m.pretrained_cfg, "classes": CLASSES, "class_names": NAMES, "img_size": 48,
                        "dataset": "shapes", "metrics": {"top1": 50.0}}
    return m


@pytest.fixture(scope="module")
def folder(model, tmp_path_factory):
    return save_pretrained(model, tmp_path_factory.mktemp("pretrained") / "tiny",
                           {"command": "bagnet train --model bagnet_tiny"})


def _outputs(m, x):
    with torch.no_grad():
        return m.eval()(x)


def _assert_same_model(loaded, model):
    assert loaded.model_name == model.model_name and loaded.num_classes == model.num_classes
    sd = model.state_dict()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert loaded.pretrained_cfg["classes"] == CLASSES and loaded.pretrained_cfg["class_names"] == NAMES
    assert loaded.pretrained_cfg["img_size"] == 48


def test_save_pretrained_writes_safetensors_and_a_described_config(model, folder):
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    # an independent reader of the weights: safetensors itself
    tensors = safetensors_torch.load_file(str(folder / "model.safetensors"))
    assert tensors.keys() == model.state_dict().keys()
    assert all(torch.equal(tensors[k], v) for k, v in model.state_dict().items())
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "bagnet_tiny" and config["num_classes"] == 3
    assert config["model_args"] == {"num_classes": 3}
    assert config["pretrained_cfg"]["input_size"] == [3, 48, 48]
    assert config["pretrained_cfg"]["mean"] == list(model.pretrained_cfg["mean"])
    assert config["label_names"] == CLASSES
    assert config["label_descriptions"] == dict(zip(CLASSES, NAMES))
    section = config["bagnet"]
    assert section["receptive_field"] == 9 and section["patch_stride"] == 8
    assert section["meta"]["metrics"] == {"top1": 50.0} and section["meta"]["dataset"] == "shapes"
    assert section["meta"]["command"] == "bagnet train --model bagnet_tiny"
    assert "source" not in section["meta"]


def test_folders_load_through_every_loader(model, folder):
    _assert_same_model(bagnet.create_model(str(folder)), model)
    _assert_same_model(bagnet.load_model(folder), model)
    _assert_same_model(bagnet.create_model("bagnet_tiny", pretrained=folder), model)
    _assert_same_model(bagnet.create_model("bagnet_tiny", pretrained=folder / "model.safetensors"), model)
    with pytest.raises(ValueError, match="bagnet_tiny"):
        bagnet.create_model("bagnet9", pretrained=folder)  # the folder says which model it is
    # a bare .safetensors state dict loads when the model is named
    bare = Path(shutil.copytree(folder, folder.parent / "bare")) / "model.safetensors"
    (bare.parent / "config.json").unlink()
    loaded = bagnet.create_model("bagnet_tiny", pretrained=bare, num_classes=3)
    x = torch.randn(1, 3, 30, 30)
    torch.testing.assert_close(_outputs(loaded, x), _outputs(model, x))


def test_cli_weights_take_a_folder(model, folder, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "x.png"
    Image.new("RGB", (50, 60), (200, 30, 30)).save(image)
    assert main(["explain", str(image), "--weights", str(folder), "--out", str(tmp_path / "out")]) == 0
    record = json.loads((tmp_path / "out" / "x.json").read_text())
    assert record["model"] == "bagnet_tiny" and record["predictions"][0]["name"] in NAMES


def test_a_model_file_and_a_folder_hold_the_same_model(model, folder, tmp_path):
    pt = bagnet.load_model(save_model_file(tmp_path / "m.pt", model))
    st = bagnet.load_model(folder)
    x = torch.randn(2, 3, 33, 41)
    torch.testing.assert_close(_outputs(st, x), _outputs(pt, x), rtol=0, atol=0)


def test_torchvision_models_save_and_load_as_folders(tmp_path):
    ref = bagnet.create_model("resnet18", num_classes=3).eval()
    loaded = bagnet.load_model(save_pretrained(ref, tmp_path / "r18"))
    assert loaded.model_name == "resnet18"
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(_outputs(loaded, x), _outputs(ref, x), rtol=0, atol=0)


def test_folder_errors_are_clear(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json and model.safetensors"):
        bagnet.load_model(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="needs config.json and model.safetensors"):
        bagnet.load_model(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match="config"):
        bagnet.load_model(broken)


# -- the Hugging Face Hub, offline ------------------------------------------------------


class RecordingHub:
    """Stands in for huggingface_hub.HfApi (the network side only): keeps what is uploaded."""

    def __init__(self, root: Path):
        self.root = root
        self.created = []

    def create_repo(self, repo_id, repo_type, private, exist_ok):
        self.created.append((repo_id, repo_type, private, exist_ok))

    def upload_folder(self, repo_id, folder_path, repo_type, commit_message, revision):
        shutil.copytree(folder_path, self.root / repo_id, dirs_exist_ok=True)
        return f"commit {commit_message}"


def hub_cache(cache: Path, repo_id: str, files: Path) -> Path:
    """A Hugging Face cache holding one snapshot of ``repo_id`` with ``files``' content,
    laid out as huggingface_hub lays out what it downloads."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(files, repo / "snapshots" / COMMIT)
    return cache


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    hf_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path / "hf-cache"


def test_push_to_hub_then_load_from_the_hub_cache(model, tmp_path, offline_hub):
    remote = RecordingHub(tmp_path / "remote")
    assert model.push_to_hub("org/tiny", api=remote, commit_message="first") == "commit first"
    assert remote.created == [("org/tiny", "model", None, True)]
    uploaded = tmp_path / "remote" / "org" / "tiny"
    assert sorted(p.name for p in uploaded.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert 'bagnet.create_model("hf-hub:org/tiny")' in (uploaded / "README.md").read_text()

    hub_cache(offline_hub, "org/tiny", uploaded)
    loaded = bagnet.create_model("hf-hub:org/tiny")
    _assert_same_model(loaded, model)
    assert loaded.pretrained_cfg["source"] == "hf-hub:org/tiny"
    _assert_same_model(bagnet.create_model("bagnet_tiny", pretrained="hf-hub:org/tiny"), model)


def test_timm_loads_the_same_hub_repo(model, tmp_path, offline_hub):
    timm = pytest.importorskip("timm")
    save_pretrained(model, tmp_path / "files")
    hub_cache(offline_hub, "org/tiny", tmp_path / "files")
    m = timm.create_model("hf-hub:org/tiny", pretrained=True)
    _assert_same_model(m, model)
    assert timm.data.resolve_data_config(model=m)["input_size"] == (3, 48, 48)
    _assert_same_model(timm.create_model("hf-hub:org/tiny", pretrained=True, cache_dir=offline_hub), model)


def test_hub_repo_not_in_the_cache_offline_is_one_clear_error(offline_hub, capsys):
    with pytest.raises(OSError, match="not in the Hugging Face cache"):
        bagnet.create_model("hf-hub:org/absent")
    assert main(["export", "--weights", "hf-hub:org/absent", "--out", "never.onnx"]) == 1
    assert "not in the Hugging Face cache" in capsys.readouterr().err
    with pytest.raises(ValueError, match="ORG/NAME"):
        bagnet.create_model("hf-hub:not a repo")


# -- no pickle from strangers -----------------------------------------------------------


class _Payload:
    """Pickles to a call of Path.touch: code that runs when the file is unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_malicious_pickle_is_refused_by_every_loader(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": _Payload(marker)}, evil)
    # the file really is an exploit: loading it with pickle's full powers runs its code
    torch.load(evil, weights_only=False)
    assert marker.exists()
    marker.unlink()

    folder = tmp_path / "evil-folder"
    folder.mkdir()
    shutil.copy(evil, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({"architecture": "bagnet_tiny", "num_classes": 3}))
    from bagnet.train import load_checkpoint

    attempts = [
        lambda: bagnet.create_model("bagnet_tiny", pretrained=evil),
        lambda: bagnet.load_model(evil),
        lambda: bagnet.load_model(folder),
        lambda: load_checkpoint(evil),
    ]
    for attempt in attempts:
        with pytest.raises(ValueError, match="(?i)weights only|unpickl|not a readable"):
            attempt()
    assert main(["export", "--weights", str(evil), "--out", str(tmp_path / "x.onnx")]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert not marker.exists()


def test_every_torch_load_in_the_library_is_weights_only():
    src = Path(bagnet.__file__).parent
    calls = []
    for path in src.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        start = 0
        while (i := text.find("torch.load(", start)) >= 0:
            depth, j = 0, i + len("torch.load")
            while True:  # the whole call, up to its closing parenthesis
                depth += {"(": 1, ")": -1}.get(text[j], 0)
                j += 1
                if depth == 0:
                    break
            calls.append((path.relative_to(src), text[i:j]))
            start = j
    assert calls, "the scan found no torch.load at all"
    unsafe = [f"{p}: {call}" for p, call in calls if "weights_only=True" not in call]
    assert not unsafe, unsafe
