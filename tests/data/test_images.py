"""load_image: every format and pixel mode comes out as the upright 8-bit RGB a viewer shows."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from bagnet.data.images import ImageError, load_image

RGB = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]], [[10, 20, 30], [200, 100, 50], [255, 255, 255]]], np.uint8)


def pixels(path_or_file):
    img = load_image(path_or_file)
    assert img.mode == "RGB"
    return np.asarray(img)


@pytest.mark.parametrize("ext,kwargs,lossless", [
    ("png", {}, True),
    ("webp", {"lossless": True}, True),
    ("bmp", {}, True),
    ("tif", {}, True),
    ("tiff", {"compression": "tiff_lzw"}, True),
    ("jpg", {"quality": 95, "subsampling": 0}, False),
])
def test_formats(tmp_path, ext, kwargs, lossless):
    big = np.kron(RGB, np.ones((8, 8, 1), np.uint8))  # 16 x 24 blocks, so JPEG keeps the colours
    path = tmp_path / f"x.{ext}"
    Image.fromarray(big).save(path, **kwargs)
    got = pixels(path)
    assert got.shape == big.shape
    if lossless:
        assert np.array_equal(got, big)
    else:
        assert np.abs(got[4::8, 4::8].astype(int) - RGB).max() <= 6  # block centres


def test_file_object(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(RGB).save(buf, "PNG")
    buf.seek(0)
    assert np.array_equal(pixels(buf), RGB)


def test_grayscale_and_bilevel(tmp_path):
    gray = np.array([[0, 77, 255]], np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    assert np.array_equal(pixels(tmp_path / "g.png"), np.repeat(gray[..., None], 3, -1))
    Image.fromarray(gray > 100).save(tmp_path / "b.bmp")  # mode "1"
    assert pixels(tmp_path / "b.bmp")[0].tolist() == [[0, 0, 0], [0, 0, 0], [255, 255, 255]]


def test_palette_with_and_without_transparency(tmp_path):
    p = Image.new("P", (3, 1))
    p.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    for i in range(3):
        p.putpixel((i, 0), i)
    p.save(tmp_path / "p.png")
    assert pixels(tmp_path / "p.png")[0].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    p.save(tmp_path / "pt.gif", transparency=1)
    assert pixels(tmp_path / "pt.gif")[0].tolist() == [[255, 0, 0], [255, 255, 255], [0, 0, 255]]


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.array([[[255, 0, 0, 255], [255, 0, 0, 0], [0, 0, 0, 128]]], np.uint8)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    got = pixels(tmp_path / "a.png")[0]
    assert got[0].tolist() == [255, 0, 0] and got[1].tolist() == [255, 255, 255]
    assert np.all(np.abs(got[2].astype(int) - 127) <= 1)  # black at half opacity over white
    la = np.array([[[0, 0], [50, 255]]], np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert pixels(tmp_path / "la.png")[0].tolist() == [[255, 255, 255], [50, 50, 50]]


def test_colour_key_transparency(tmp_path):
    # PNG tRNS on gray and RGB images: transparent like an alpha channel (was ignored)
    Image.fromarray(np.array([[0, 100, 200]], np.uint8)).save(tmp_path / "l.png", transparency=100)
    assert pixels(tmp_path / "l.png")[0].tolist() == [[0, 0, 0], [255, 255, 255], [200, 200, 200]]
    rgb = Image.fromarray(np.array([[[10, 20, 30], [1, 2, 3]]], np.uint8))
    rgb.save(tmp_path / "r.png", transparency=(1, 2, 3))
    assert pixels(tmp_path / "r.png")[0].tolist() == [[10, 20, 30], [255, 255, 255]]


@pytest.mark.parametrize("ext", ["jpg", "tif"])
def test_cmyk(tmp_path, ext):
    c = Image.new("CMYK", (16, 8))
    c.paste((255, 0, 0, 0), (0, 0, 8, 8))  # pure cyan
    c.paste((0, 0, 0, 255), (8, 0, 16, 8))  # pure black
    c.save(tmp_path / f"c.{ext}", **({"quality": 100} if ext == "jpg" else {}))
    got = pixels(tmp_path / f"c.{ext}").astype(int)
    assert np.abs(got[4, 4] - [0, 255, 255]).max() <= 3
    assert np.abs(got[4, 12]).max() <= 3


def _png16(path, arr, color_type):
    """Write a 16-bit PNG by hand (Pillow cannot write 16-bit RGB)."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16_bit(tmp_path):
    gray = np.array([[0, 32768, 65535, 1000]], np.uint16)
    for ext in ("png", "tif"):
        Image.fromarray(gray).save(tmp_path / f"g16.{ext}")
        assert pixels(tmp_path / f"g16.{ext}")[0, :, 0].tolist() == [0, 128, 255, 4]  # scaled, not clipped
    _png16(tmp_path / "rgb16.png", np.array([[[65535, 0, 32768], [256, 65535, 0]]], np.uint16), 2)
    assert pixels(tmp_path / "rgb16.png")[0].tolist() == [[255, 0, 128], [1, 255, 0]]
    _png16(tmp_path / "rgba16.png", np.array([[[65535, 0, 0, 0], [0, 0, 65535, 65535]]], np.uint16), 6)
    assert pixels(tmp_path / "rgba16.png")[0].tolist() == [[255, 255, 255], [0, 0, 255]]


def test_float_tiff(tmp_path):
    Image.fromarray(np.array([[0, 0.5, 1.0]], np.float32)).save(tmp_path / "f.tif")
    assert pixels(tmp_path / "f.tif")[0, :, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize("orientation,corner", [(1, (0, 0)), (3, (9, 19)), (6, (0, 9)), (8, (19, 0))])
def test_exif_orientation(tmp_path, orientation, corner):
    a = np.zeros((10, 20, 3), np.uint8)
    a[:3, :3] = (255, 0, 0)  # red block at the stored top-left
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(tmp_path / "o.jpg", exif=exif, quality=100)
    got = pixels(tmp_path / "o.jpg")
    assert got.shape[:2] == ((10, 20) if orientation in (1, 3) else (20, 10))
    assert got[corner][0] > 200 and got[corner][1] < 60


def test_broken_exif_is_ignored(tmp_path, recwarn):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, "JPEG", quality=100)
    jpeg = buf.getvalue()
    seg = b"Exif\x00\x00II\x2a\x00\x08\x00\x00\x00\xff\xffgarbage"
    app1 = b"\xff\xe1" + (len(seg) + 2).to_bytes(2, "big") + seg
    (tmp_path / "e.jpg").write_bytes(jpeg[:2] + app1 + jpeg[2:])
    assert np.abs(pixels(tmp_path / "e.jpg")[0, 0].astype(int) - [1, 2, 3]).max() <= 2
    assert not [w for w in recwarn if "EXIF" in str(w.message)]


def test_bad_files_raise_image_error_naming_the_file(tmp_path):
    big = np.kron(RGB, np.ones((8, 8, 1), np.uint8))
    Image.fromarray(big).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    Image.fromarray(big).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) - 30])
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "fake.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    for name, message in [("cut.jpg", "truncated"), ("cut.png", "truncated"), ("notes.txt", "not an image"),
                          ("fake.jpg", "corrupt"), ("empty.png", "empty file"), ("folder.png", "folder")]:
        with pytest.raises(ImageError, match=message) as info:
            load_image(tmp_path / name)
        assert name in str(info.value) and isinstance(info.value, ValueError)
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")


def test_unreadable_file(tmp_path, monkeypatch):
    Image.fromarray(RGB).save(tmp_path / "locked.png")

    # chmod 0 does not stop root (CI runs as root), so the denial comes from Pillow's open
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Image, "open", denied)
    with pytest.raises(ImageError, match="locked.png: cannot be read .Permission denied"):
        load_image(tmp_path / "locked.png")


def test_max_pixels(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "x.png")
    assert load_image(tmp_path / "x.png", max_pixels=6).size == (3, 2)
    with pytest.raises(ImageError, match="more than the limit"):
        load_image(tmp_path / "x.png", max_pixels=5)


def test_find_images_follows_links_once_and_skips_other_files(tmp_path):
    from bagnet.data.images import find_images

    real = tmp_path / "real" / "cats"
    real.mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(real / "a.png")
    Image.new("RGB", (4, 4)).save(real / "B.JPG")
    (real / "notes.txt").write_text("x")
    (real / ".hidden").mkdir()
    Image.new("RGB", (4, 4)).save(real / ".hidden" / "h.png")
    split = tmp_path / "split"
    split.mkdir()
    (split / "cats").symlink_to(real, target_is_directory=True)
    (real / "loop").symlink_to(tmp_path / "real", target_is_directory=True)  # a cycle
    assert [p.name for p in find_images(split)] == ["B.JPG", "a.png"]


def test_shrink_to_decodes_jpegs_at_a_reduced_scale(tmp_path):
    """A 400 x 320 JPEG asked for a short side of at least 80 decodes at 1/4 scale (100 x 80),
    looking like the full image scaled down; rotated by EXIF, and PNGs keep their size."""
    rng = np.random.default_rng(0)
    blocks = np.kron(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8), np.ones((40, 40, 1), np.uint8))  # 320 x 400
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(blocks).save(tmp_path / "x.jpg", quality=95, exif=exif)
    Image.fromarray(blocks).save(tmp_path / "x.png")
    img = load_image(tmp_path / "x.jpg", shrink_to=80)
    assert img.size == (80, 100)  # upright: 320 high by 400 wide, rotated, at 1/4
    expected = np.rot90(blocks[::4, ::4], k=-1).astype(float)
    assert np.abs(np.asarray(img, float) - expected).mean() < 6
    assert load_image(tmp_path / "x.jpg", shrink_to=200).size == (320, 400)  # 1/2 would be too small
    assert load_image(tmp_path / "x.png", shrink_to=80).size == (400, 320)  # no EXIF, full size
