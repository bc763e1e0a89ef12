"""An output path that cannot be written is refused before any work, in one line naming the
option, instead of an OS error after minutes of computing (or a lost result)."""

import os

import pytest

from bagnet._io import check_writable
from bagnet.cli.main import main
from bagnet.testing import make_image_folder


def test_check_writable_cases(tmp_path):
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    check_writable(tmp_path / "new.json", "--json")  # a new file in a folder
    check_writable(tmp_path / "a" / "b" / "new.json", "--json")  # folders are made
    check_writable(a_file, "--json")  # an existing file is replaced
    check_writable(tmp_path, "--out", folder=True)
    check_writable(tmp_path / "a" / "b", "--out", folder=True)
    with pytest.raises(ValueError, match=r"^--json .* is a folder; give the name of a file"):
        check_writable(tmp_path, "--json")
    with pytest.raises(ValueError, match=r"^--out .*f.txt is a file; it must be a folder"):
        check_writable(a_file, "--out", folder=True)
    with pytest.raises(ValueError, match=r"f.txt is a file, so no folder can be made below it"):
        check_writable(a_file / "x.json", "--json")
    with pytest.raises(ValueError, match=r"f.txt is a file, so no folder can be made below it"):
        check_writable(a_file / "sub", "--out", folder=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in any folder")
def test_check_writable_refuses_a_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ValueError, match="no permission to write in"):
            check_writable(ro / "x" / "y.json", "--json")
    finally:
        ro.chmod(0o755)


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    root = tmp_path_factory.mktemp("out")
    data = make_image_folder(root / "data", per_class=1, size=32, splits=("train", "val"))
    a_file = root / "a_file"
    a_file.write_text("not a folder")
    image = next((data / "val").rglob("*.png"))
    return {"data": str(data), "file": str(a_file), "dir": str(root), "image": str(image)}


MODEL = ["--model", "bagnet_tiny@random"]


@pytest.mark.parametrize("argv, message", [
    (["eval", "--data", "{data}", *MODEL, "--json", "{dir}"], "--json {dir} is a folder"),
    (["eval", "--data", "{data}", *MODEL, "--predictions", "{file}/p.csv"], "{file} is a file, so no folder"),
    (["certify", "--data", "{data}", *MODEL, "--out", "{file}"], "--out {file} is a file; it must be a folder"),
    (["explain", "{image}", *MODEL, "--out", "{file}"], "--out {file} is a file; it must be a folder"),
    (["train", "--data", "{data}", "--model", "bagnet_tiny", "--out", "{file}"], "--out {file} is a file"),
    (["analyze", "accuracy", "--data", "{data}", "--bagnet", "bagnet_tiny@random", "--out", "{file}/r"],
     "output folder {file}/r: {file} is a file"),
    (["calibrate", "--data", "{data}", "--unknown", "{data}", *MODEL, "--out", "{file}/c.pt"],
     "--out {file}/c.pt: {file} is a file"),
    (["calibrate", "--data", "{data}", "--unknown", "{data}", *MODEL, "--out", "{dir}/c.pt", "--json", "{dir}"],
     "--json {dir} is a folder"),
    (["bench", "--models", "bagnet_tiny@random", "--json", "{dir}"], "--json {dir} is a folder"),
    (["export", *MODEL, "--out", "{dir}"], "--out {dir} is a folder"),
])
def test_commands_refuse_unwritable_outputs_first(places, argv, message, capsys):
    rc = main([a.format(**places) for a in argv])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and message.format(**places) in err, err
    assert not os.path.exists(os.path.join(places["dir"], "c.pt"))
