import hashlib
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cirkit.errors import ImageError
from cirkit.images import image_sha256, iter_image_files, load_image

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def close(pixel, expected, tol=12):
    """JPEG is lossy: compare colours channel by channel within `tol`."""
    return all(abs(a - b) <= tol for a, b in zip(pixel, expected))


def reason(path, **kw) -> str:
    with pytest.raises(ImageError) as info:
        load_image(path, **kw)
    assert type(info.value) is ImageError
    return str(info.value)


def test_plain_jpeg(tmp_path):
    p = tmp_path / "a.jpg"
    Image.new("RGB", (32, 16), (200, 30, 40)).save(p, quality=95)
    im = load_image(str(p))
    assert (im.mode, im.size) == ("RGB", (32, 16))
    assert close(im.getpixel((5, 5)), (200, 30, 40))
    im.load()  # fully loaded and independent of the (closed) file


def test_cmyk_jpeg(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(p, quality=95)  # pure red in CMYK
    with Image.open(p) as raw:
        assert raw.mode == "CMYK"
    im = load_image(p)
    assert (im.mode, im.size) == ("RGB", (16, 16))
    assert close(im.getpixel((8, 8)), RED)


def test_16bit_grayscale_png_is_scaled_not_saturated(tmp_path):
    p = tmp_path / "g16.png"
    ramp = np.linspace(0, 65535, 256).round().astype(np.uint16)
    Image.fromarray(np.tile(ramp, (4, 1))).save(p)
    with Image.open(p) as raw:
        assert raw.mode in ("I;16", "I")
    im = load_image(p)
    assert (im.mode, im.size) == ("RGB", (256, 4))
    row = np.asarray(im)[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert abs(row[128] - 128) <= 1
    assert np.all(np.diff(row) >= 0) and len(set(row)) > 200
    assert (np.asarray(im)[..., 0] == np.asarray(im)[..., 2]).all()  # stays gray


def test_16bit_rgb_png(tmp_path):
    # Pillow cannot write 48-bit PNGs: build one by hand (2x1, big-endian samples).
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixels = struct.pack(">6H", 65535, 0, 0, 0, 32896, 65535)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 1, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" + pixels))
        + chunk(b"IEND", b"")
    )
    p = tmp_path / "rgb16.png"
    p.write_bytes(png)
    im = load_image(p)
    assert (im.mode, im.size) == ("RGB", (2, 1))
    assert im.getpixel((0, 0)) == RED
    assert im.getpixel((1, 0)) == (0, 128, 255)


@pytest.mark.parametrize(
    "values, expected",
    [([0.0, 0.5, 1.0], [0, 128, 255]), ([-10.0, 0.0, 30.0], [0, 64, 255])],
)
def test_float_tiff(tmp_path, values, expected):
    p = tmp_path / "f.tif"
    Image.fromarray(np.array([values], dtype=np.float32)).save(p)
    with Image.open(p) as raw:
        assert raw.mode == "F"
    im = load_image(p)
    assert [im.getpixel((x, 0)) for x in range(3)] == [(v, v, v) for v in expected]


def test_32bit_int_tiff_over_16_bits_is_stretched(tmp_path):
    p = tmp_path / "i.tif"
    Image.fromarray(np.array([[0, 100_000, 200_000]], dtype=np.int32)).save(p)
    with Image.open(p) as raw:
        assert raw.mode == "I"
    im = load_image(p)
    assert [im.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_palette_png_transparency_becomes_white(tmp_path):
    p = tmp_path / "pal.png"
    im = Image.new("P", (4, 2), 0)
    im.putpalette([255, 0, 0, 0, 0, 0] + [0] * 762)
    for x in (2, 3):
        for y in (0, 1):
            im.putpixel((x, y), 1)
    im.save(p, transparency=1)
    out = load_image(p)
    assert (out.mode, out.size) == ("RGB", (4, 2))
    assert out.getpixel((0, 0)) == RED
    assert out.getpixel((3, 1)) == WHITE


def test_palette_png_without_transparency(tmp_path):
    p = tmp_path / "pal.png"
    Image.new("RGB", (3, 3), BLUE).convert("P").save(p)
    out = load_image(p)
    assert out.mode == "RGB" and out.getpixel((1, 1)) == BLUE


def test_rgba_composited_over_white(tmp_path):
    p = tmp_path / "rgba.png"
    im = Image.new("RGBA", (3, 1))
    im.putdata([(255, 0, 0, 255), (0, 0, 255, 0), (0, 0, 0, 128)])
    im.save(p)
    out = load_image(p)
    assert (out.mode, out.size) == ("RGB", (3, 1))
    assert out.getpixel((0, 0)) == RED
    assert out.getpixel((1, 0)) == WHITE
    assert close(out.getpixel((2, 0)), (127, 127, 127), tol=1)


@pytest.mark.parametrize("mode, value", [("LA", (0, 0)), ("L", 0), ("1", 0)])
def test_gray_modes(tmp_path, mode, value):
    p = tmp_path / "g.png"
    Image.new(mode, (2, 2), value).save(p)
    out = load_image(p)
    # fully transparent LA is white; opaque L/1 black is black
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (WHITE if mode == "LA" else (0, 0, 0))


def test_exif_orientation_applied(tmp_path):
    p = tmp_path / "rot.jpg"
    im = Image.new("RGB", (40, 20), RED)
    im.paste(BLUE, (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    im.save(p, exif=exif, quality=95)
    out = load_image(p)
    assert (out.mode, out.size) == ("RGB", (20, 40))
    assert close(out.getpixel((10, 5)), RED)  # left edge went to the top
    assert close(out.getpixel((10, 35)), BLUE)


def test_animated_gif_first_frame(tmp_path):
    p = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, GREEN, BLUE)]
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(p) as raw:
        assert raw.n_frames == 3
    out = load_image(p)
    assert (out.mode, out.size) == ("RGB", (8, 8))
    assert out.getpixel((4, 4)) == RED


def test_truncated_jpeg(tmp_path):
    src = tmp_path / "full.jpg"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(src, quality=95)
    p = tmp_path / "half.jpg"
    data = src.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    assert reason(p) == "corrupt or truncated image"


def test_empty_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.touch()
    assert reason(p) == "empty file (0 bytes)"


def test_text_file_named_jpg(tmp_path):
    p = tmp_path / "note.jpg"
    p.write_text("not really a picture\n")
    assert reason(p) == "not an image"


def test_missing_file(tmp_path):
    assert reason(tmp_path / "nope.png") == "missing file"
    assert reason(tmp_path / "nodir" / "nope.png") == "missing file"


def test_directory(tmp_path):
    (tmp_path / "d.jpg").mkdir()
    assert reason(tmp_path / "d.jpg") == "not a regular file"


def test_permission_denied(tmp_path, monkeypatch):
    p = tmp_path / "locked.png"
    Image.new("RGB", (2, 2)).save(p)
    real_open = open

    def deny(path, *args, **kwargs):  # root reads any file, so refuse the way the OS does for others
        if str(path) == str(p):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", deny)
    assert reason(p) == "unreadable: permission denied"


def test_too_large_refused_from_header_without_warning(tmp_path):
    p = tmp_path / "big.png"
    Image.new("RGB", (200, 100)).save(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert reason(p, max_pixels=19_999) == "too large: 200x100 pixels exceeds the limit of 19999"
        assert load_image(p, max_pixels=20_000).size == (200, 100)


def test_pillow_bomb_limit_no_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    warn, error = tmp_path / "warn.png", tmp_path / "error.png"
    Image.new("RGB", (150, 100)).save(warn)  # over MAX_IMAGE_PIXELS: Pillow warns
    Image.new("RGB", (300, 100)).save(error)  # over twice that: Pillow raises
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(warn).size == (150, 100)
        assert reason(error) == "too large: exceeds Pillow's decompression-bomb limit"


def test_image_sha256(tmp_path):
    p = tmp_path / "x.bin"
    data = os.urandom(3 * 1024 * 1024 + 7)
    p.write_bytes(data)
    assert image_sha256(p) == hashlib.sha256(data).hexdigest()
    with pytest.raises(ImageError, match="missing file"):
        image_sha256(tmp_path / "nope")


def test_iter_image_files(tmp_path):
    for rel in [
        "b.JPG", "a.png", "sub/c.webp", "sub/deeper/d.TIFF", "a b/e.gif", "z.jpeg",
        "notes.txt", "noext", "img.jpg.bak", ".hidden.jpg", ".cache/f.png", "sub/.git/g.png",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "dir.png").mkdir()  # a folder with an image suffix is not a file
    os.symlink(tmp_path, tmp_path / "sub" / "loop")  # must not recurse forever
    os.symlink(tmp_path / "missing.png", tmp_path / "broken.png")
    found = iter_image_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a b/e.gif", "a.png", "b.JPG", "sub/c.webp", "sub/deeper/d.TIFF", "z.jpeg",
    ]
    assert all(isinstance(p, Path) and p.is_file() for p in found)


def test_iter_image_files_follows_symlinked_folder(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "o.png").write_bytes(b"x")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "linked")
    assert [p.relative_to(root).as_posix() for p in iter_image_files(root)] == ["linked/o.png"]
