"""Decoding single images (danvae.images): odd formats handled, bad files refused with a reason."""
from __future__ import annotations

import io
import os
import resource
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from danvae.data.folders import DataError, discover, pack, scan
from danvae.images import MAX_PIXELS, ImageError, brightness, decode_image, read_image

SIZE = 16


def _png16_rgb(values: tuple[int, int, int], w: int = 4, h: int = 4) -> bytes:
    """A 16-bit-per-channel RGB PNG, written by hand (PIL cannot write one)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + struct.pack(">HHH", *values) * w for _ in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_16bit_grayscale_is_scaled_not_clipped(make):
    g16 = np.array([[65535, 32768, 200, 0]], np.uint16).repeat(4, 0)
    arr, info = decode_image(make.png(g16), size=4, channels=3)
    assert info.mode.startswith("I;16") and info.channels == 1
    assert arr.shape == (4, 4, 3)
    # 65535 -> 255, 32768 -> 128, and a small 16-bit value stays dark (it is not read as 8-bit 200)
    assert arr[0, :, 0].tolist() == [255, 128, 1, 0]
    assert (arr == arr[..., :1]).all()


def test_16bit_rgb_is_scaled():
    arr, info = decode_image(_png16_rgb((65535, 32768, 0)), size=4, channels=3)
    assert info.channels == 3
    assert arr[0, 0].tolist() == [255, 128, 0]


def test_grayscale_rgba_and_palette_become_rgb_or_gray(make):
    arr, info = decode_image(make.png(np.full((8, 8), 100, np.uint8)), size=8, channels=3)
    assert info.channels == 1 and (arr == 100).all() and arr.shape == (8, 8, 3)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 128  # half-transparent red, composited on black
    arr, info = decode_image(make.png(rgba), size=8, channels=3)
    assert info.channels == 4
    assert abs(int(arr[0, 0, 0]) - 128) <= 1 and arr[..., 1:].max() == 0
    arr, _ = decode_image(make.png(make.noise((8, 8, 3), 0)), size=8, channels=1)
    assert arr.shape == (8, 8, 1)
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([255, 255, 255, 10, 20, 30] + [0] * 762)
    pal.paste(1, (0, 0, 8, 4))  # top half index 1, bottom half index 0 (transparent)
    buf = io.BytesIO()
    pal.save(buf, "PNG", transparency=0)
    arr, info = decode_image(buf.getvalue(), size=8, channels=3)
    assert info.mode == "P" and info.channels == 4
    assert (arr[:4] == [10, 20, 30]).all() and (arr[4:] == 0).all()


def test_other_size_is_resized_and_flagged(make):
    arr, info = decode_image(make.png(make.noise((24, 40, 3), 1)), size=SIZE, channels=3)
    assert arr.shape == (SIZE, SIZE, 3)
    assert (info.width, info.height, info.resized) == (40, 24, True)
    _, same = decode_image(make.png(make.noise((SIZE, SIZE, 3), 1)), size=SIZE, channels=3)
    assert same.resized is False


def test_large_jpeg_decodes_to_the_requested_size(make):
    arr, info = decode_image(make.jpeg(make.noise((300, 200, 3), 2)), size=32, channels=3)
    assert arr.shape == (32, 32, 3) and (info.width, info.height) == (200, 300) and info.format == "JPEG"


@pytest.mark.parametrize("side", [20000, 9000])  # over PIL's own hard limit, and between ours and PIL's
def test_decompression_bomb_is_refused_fast_from_the_header(side, make):
    assert side * side > MAX_PIXELS
    data = make.header_only(side, side)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    with pytest.raises(ImageError, match="decompression bomb"):
        decode_image(data, size=SIZE, channels=3)
    assert time.perf_counter() - start < 0.5
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mib < 100, f"peak memory grew by {grown_mib:.0f} MiB while refusing a bomb"


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("empty", "empty file"),
        ("text", "not a recognised image format"),
        ("gif", "not a recognised image format"),
        ("png_cut", "truncated"),
        ("jpeg_cut", "truncated"),
    ],
)
def test_bad_bytes_give_a_one_line_reason(kind, reason, make):
    data = {
        "empty": lambda: b"",
        "text": lambda: b"plain text\n",
        "gif": lambda: b"GIF89a" + b"\x00" * 40,
        "png_cut": lambda: make.png(make.noise((SIZE, SIZE, 3), 3))[:60],
        "jpeg_cut": lambda: make.jpeg(make.noise((64, 64, 3), 4))[:400],
    }[kind]()
    with pytest.raises(ImageError) as err:
        decode_image(data, size=SIZE, channels=3)
    assert reason in str(err.value) and "\n" not in str(err.value)


def test_read_image_refuses_fifo_and_folder_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(ImageError, match="not a regular file"):
        read_image(tmp_path / "pipe.png", SIZE)
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ImageError, match="folder"):
        read_image(tmp_path / "dir.png", SIZE)
    with pytest.raises(ImageError, match="not found"):
        read_image(tmp_path / "missing.png", SIZE)


def test_brightness_is_mean_of_channel_max(make):
    imgs = make.noise((5, 6, 7, 3), 5)
    expected = (imgs.max(axis=-1) / 255.0).mean(axis=(-2, -1))
    np.testing.assert_allclose(brightness(imgs), expected, rtol=0, atol=1e-12)
    assert brightness(imgs[0]) == pytest.approx(expected[0])
    np.testing.assert_allclose(brightness(imgs[..., :1]), (imgs[..., 0] / 255.0).mean(axis=(-2, -1)))


# ----------------------------------------------------------------------------- folders
def test_scan_and_discover_refuse_symlinks_leaving_the_tree(bad_corpus):
    s = scan(bad_corpus.src)
    names = {os.path.basename(p) for p in s.found["path"]}
    assert "link_outside.png" not in names and "link_inside.png" in names
    assert "notes.txt" not in names and "folder.png" not in names
    reasons = dict((os.path.basename(p), r) for p, r in s.problems)
    assert "symlink points outside" in reasons["link_outside.png"]
    assert "broken symlink" in reasons["broken_link.png"]
    found = discover(bad_corpus.src)
    assert list(found.columns) == ["path", "label", "defect"] and set(found["label"]) == {"unknown"}
    packed = pack(found, SIZE, 3)
    skipped = {os.path.basename(p) for p, _ in packed.skipped}
    assert {"empty.png", "bomb.png", "fifo.png", "unreadable.png"} <= skipped
    assert len(packed.images) == len(packed.table) == len(found) - len(packed.skipped)


def test_discover_errors_and_masks_folder_is_not_images(tmp_path, make):
    with pytest.raises(DataError, match="does not exist"):
        discover(tmp_path / "nope")
    (tmp_path / "flat" / "masks").mkdir(parents=True)
    (tmp_path / "flat" / "masks" / "m.png").write_bytes(make.png(np.zeros((4, 4), np.uint8)))
    with pytest.raises(DataError, match="no images"):
        discover(tmp_path / "flat")
    (tmp_path / "flat" / "a.png").write_bytes(make.png(np.zeros((4, 4), np.uint8)))
    assert [os.path.basename(p) for p in discover(tmp_path / "flat")["path"]] == ["a.png"]


def test_exif_orientation_is_applied():
    """A camera stores a portrait shot sideways with orientation 6 ("rotate 90° clockwise to show")."""
    stored = np.zeros((32, 32, 3), np.uint8)
    stored[:, :16] = 255  # left half white as stored: the top half once shown
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, "JPEG", quality=95, exif=exif)
    arr, _ = decode_image(buf.getvalue(), 32, 3)
    assert arr[:12].mean() > 200 and arr[-12:].mean() < 50
