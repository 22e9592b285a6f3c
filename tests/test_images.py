"""Decoding photos: conversions, odd formats, and damaged files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.core.images import ImageError, decode_photo, encode_image, load_photo, save_image, to_tensor, to_uint8


def _png(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def test_uint8_tensor_round_trip_is_exact() -> None:
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    t = to_tensor(a)
    assert t.shape == (1, 3, 5, 7)
    assert t.min() >= -1
    assert t.max() <= 1
    assert np.array_equal(to_uint8(t)[0], a)
    assert to_uint8(torch.zeros(3, 2, 2)).shape == (2, 2, 3)


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))  # blue on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    photo = decode_photo(_png(img, format="JPEG", exif=exif.tobytes(), quality=95))
    assert photo.size == (20, 40)
    assert photo.pixels[0, 10, 2] > 200  # blue ends up on top


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "I;16", "CMYK", "1"])
def test_odd_modes_become_rgb(mode: str) -> None:
    base = Image.new("RGB", (32, 32), (200, 100, 50))
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    img = base.convert(mode) if mode != "I;16" else Image.fromarray(np.full((32, 32), 40000, np.uint16))
    photo = decode_photo(_png(img, format=fmt))
    assert photo.pixels.shape == (32, 32, 3)
    assert photo.pixels.dtype == np.uint8
    if mode == "I;16":
        assert abs(int(photo.pixels[0, 0, 0]) - round(40000 / 65535 * 255)) <= 1


def test_transparent_pixels_composite_over_white() -> None:
    img = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    assert (decode_photo(_png(img)).pixels == 255).all()


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    px = decode_photo(buf.getvalue()).pixels
    assert px[0, 0, 0] > 200
    assert px[0, 0, 1] < 50


@pytest.mark.parametrize(("data", "message"), [
    (b"", "empty"),
    (b"this is not an image at all", "not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an image|damaged"),
])
def test_bad_bytes_give_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        decode_photo(data, "x.png")


def test_truncated_jpeg_is_refused() -> None:
    data = _png(Image.new("RGB", (64, 64), (10, 20, 30)), format="JPEG")
    with pytest.raises(ImageError, match="damaged"):
        decode_photo(data[: len(data) // 2], "cut.jpg")


def test_huge_header_is_refused_before_decoding() -> None:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 100))
            + chunk(b"IEND", b""))
    with pytest.raises(ImageError, match="megapixels|too large"):
        decode_photo(data, "bomb.png")


def test_tiny_image_is_refused() -> None:
    with pytest.raises(ImageError, match="too small"):
        decode_photo(_png(Image.new("RGB", (1, 1))), "dot.png")


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="does not exist"):
        load_photo(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="folder"):
        load_photo(tmp_path)


def test_non_ascii_path(tmp_path: Path) -> None:
    p = tmp_path / "фото_照片.png"
    Image.new("RGB", (20, 20), (1, 2, 3)).save(p)
    assert load_photo(p).pixels[0, 0].tolist() == [1, 2, 3]


def test_export_keeps_icc_profile_and_resets_orientation(tmp_path: Path) -> None:
    icc = b"fake-icc-profile-bytes" * 4
    exif = Image.Exif()
    exif[0x0112] = 6
    src = _png(Image.new("RGB", (30, 20), (9, 9, 9)), format="JPEG", icc_profile=icc, exif=exif.tobytes())
    photo = decode_photo(src)
    out = tmp_path / "out.jpg"
    save_image(out, photo.pixels, photo=photo)
    with Image.open(out) as back:
        assert back.info.get("icc_profile") == icc
        assert back.getexif().get(0x0112) == 1
        assert back.size == (20, 30)


def test_export_format_from_suffix(tmp_path: Path) -> None:
    px = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ImageError, match="export as"):
        save_image(tmp_path / "x.gif", px)
    assert encode_image(px, "PNG")[:4] == b"\x89PNG"
