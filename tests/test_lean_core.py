"""The core install (torch, torchvision, numpy, pillow) builds models and maps; every
optional dependency is imported only where a feature needs it, and a missing one is one
line naming the pip install to run."""

import json
import subprocess
import sys

# (tqdm is not among them: torch.hub imports it when it is installed.)
OPTIONAL = ("matplotlib", "tensorboard", "captum", "skimage")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_models_maps_and_patches_import_no_optional_dependency():
    r = _python(f"""
import json, sys, torch, bagnet
from bagnet.explain import evidence_map, top_patches, map_geometry
model = bagnet.create_model("bagnet_tiny", num_classes=4).eval()
x = torch.randn(1, 3, 32, 32)
maps = evidence_map(model, x, classes=[0, 1])
patches = top_patches(maps[0], map_geometry(model, (32, 32)), k=2)
shipped = bagnet.create_model("bagnet17_slim", pretrained="imagenette")
print(json.dumps({{"shape": list(maps.shape), "patches": len(patches),
                  "loaded": sorted(m for m in {OPTIONAL!r} if m in sys.modules)}}))
""")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["shape"] == [1, 2, 32, 32] and out["patches"] == 2
    assert out["loaded"] == [], f"the core imported {out['loaded']}"


def test_the_checker_sees_an_optional_import():
    # The check above must be able to fail: plotting does import matplotlib.
    r = _python("import sys, torch, bagnet.explain as e; e.plot_image(torch.rand(3, 8, 8)); "
                "print('matplotlib' in sys.modules)")
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr


def test_a_missing_extra_is_one_line_naming_the_install(tmp_path):
    from PIL import Image

    image = tmp_path / "x.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(image)
    blocked = "import sys; sys.modules['matplotlib'] = None; sys.modules['skimage'] = None; "
    r = _python(blocked + "import torch, bagnet.explain as e\n"
                "try:\n    e.plot_image(torch.rand(3, 8, 8))\n"
                "except ImportError as err:\n    print(err)\n")
    assert r.returncode == 0 and "pip install 'bagnet[viz]'" in r.stdout, (r.stdout, r.stderr)
    r = _python(blocked + f"from bagnet.cli.main import main; sys.exit(main(['explain', {str(image)!r}, "
                f"'--out', {str(tmp_path / 'o')!r}, '--stride', 'native']))")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        "bagnet explain: error: matplotlib is not installed (drawing figures needs it): "
        "pip install 'bagnet[viz]' (or 'bagnet[all]')"), r.stderr
    r = _python(blocked + "from bagnet.app import sample_image\ntry:\n    sample_image('coffee')\n"
                "except ImportError as err:\n    print(err)\n")
    assert "pip install 'bagnet[app]'" in r.stdout, (r.stdout, r.stderr)
