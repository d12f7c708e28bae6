"""The bad-file corpus that ingest, the CLI and the new-image finder must survive, written into
tmp_path, and small image helpers. Its fixtures are shared with every test folder (tests/conftest.py)."""
from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

SIZE = 16  # the ingest's image size in these tests


def png_bytes(arr: np.ndarray, mode: str | None = None, **save) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(buf, "PNG", **save)
    return buf.getvalue()


def jpeg_bytes(arr: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A well-formed PNG whose header claims ``width×height`` RGB pixels but holds almost no data:
    a decompression bomb as far as any reader that trusts the header is concerned."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def noise(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture(scope="session")
def make() -> SimpleNamespace:
    """Image byte builders for tests (test files are not a package, so they cannot import these)."""
    return SimpleNamespace(png=png_bytes, jpeg=jpeg_bytes, header_only=png_header_only, noise=noise, size=SIZE)


@dataclass
class Corpus:
    src: Path  # the source folder holding the whole corpus (flat layout: label "unknown")
    empty_src: Path  # an existing source folder without images
    missing_src: Path  # a source folder that does not exist
    outside: Path  # a folder outside the source tree (a symlink points into it)
    good: list[str] = field(default_factory=list)  # file names that must end up in the manifest
    bad: dict[str, str] = field(default_factory=dict)  # file name -> substring of its quarantine reason
    duplicates: dict[str, str] = field(default_factory=dict)  # duplicate file name -> name of the stored original

    def sources(self) -> list[tuple[str, Path]]:
        return [("corpus", self.src), ("empty", self.empty_src), ("missing", self.missing_src)]


@pytest.fixture
def bad_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Corpus:
    src, outside = tmp_path / "src", tmp_path / "outside"
    (src / "sub").mkdir(parents=True)
    outside.mkdir()
    (tmp_path / "empty_src").mkdir()
    (tmp_path / "empty_src" / "readme.txt").write_text("no images here")
    c = Corpus(src, tmp_path / "empty_src", tmp_path / "missing_src", outside)

    def good(name: str, data: bytes) -> None:
        (src / name).write_bytes(data)
        c.good.append(name)

    def bad(name: str, data: bytes, reason: str) -> None:
        (src / name).write_bytes(data)
        c.bad[name] = reason

    rgb = png_bytes(noise((SIZE, SIZE, 3), 1))
    good("good_rgb.png", rgb)
    good("good.jpg", jpeg_bytes(noise((SIZE, SIZE, 3), 2)))
    good("gray.png", png_bytes(np.full((SIZE, SIZE), 100, np.uint8)))
    g16 = np.full((SIZE, SIZE), 32768, np.uint16)
    g16[:, : SIZE // 2] = 65535
    good("gray16.png", png_bytes(g16))  # saved as a 16-bit grayscale PNG (mode I;16)
    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 128
    good("rgba.png", png_bytes(rgba))
    good("big.png", png_bytes(noise((24, 40, 3), 3)))  # 40 wide, 24 high: resized, not refused
    palette = Image.fromarray(noise((SIZE, SIZE), 4)).convert("P")
    buf = io.BytesIO()
    palette.save(buf, "PNG", transparency=0)
    good("palette.png", buf.getvalue())

    bad("empty.png", b"", "empty file")
    full_png = png_bytes(noise((SIZE, SIZE, 3), 5))
    bad("truncated.png", full_png[: len(full_png) // 2], "truncated")
    full_jpg = jpeg_bytes(noise((64, 64, 3), 6))
    bad("truncated.jpg", full_jpg[: int(len(full_jpg) * 0.6)], "truncated")
    bad("text.png", b"this is a text file, not a picture\n", "not a recognised image format")
    bad("bomb.png", png_header_only(20000, 20000), "decompression bomb")

    (src / "good_rgb_copy.png").write_bytes(rgb)  # same content as good_rgb.png under another name
    c.duplicates["good_rgb_copy.png"] = "good_rgb.png"

    # a symlink leaving the tree: refused even though its target is a fine image
    (outside / "secret.png").write_bytes(png_bytes(noise((SIZE, SIZE, 3), 7)))
    (src / "link_outside.png").symlink_to(outside / "secret.png")
    c.bad["link_outside.png"] = "symlink points outside the source folder"
    # a symlink staying in the tree is followed; its target's name is not an image name, so
    # the content is reached only through the link
    (src / "sub" / "raw.dat").write_bytes(png_bytes(noise((SIZE, SIZE, 3), 8)))
    (src / "link_inside.png").symlink_to(Path("sub") / "raw.dat")
    c.good.append("link_inside.png")
    (src / "broken_link.png").symlink_to(tmp_path / "nowhere.png")
    c.bad["broken_link.png"] = "broken symlink"
    (src / "loop.png").symlink_to("loop.png")  # a symlink loop (Path.resolve raises RuntimeError)
    c.bad["loop.png"] = "broken symlink"
    # a name that is not UTF-8 (Linux allows any bytes): no manifest or CSV can hold it as text
    with open(os.fsencode(src) + b"/name\xff.png", "wb") as fh:
        fh.write(png_bytes(noise((SIZE, SIZE, 3), 10)))
    c.bad["name\\xff.png"] = "not valid UTF-8"
    # picture formats ingest does not read: a quarantine row each, not a silent skip
    Image.fromarray(noise((SIZE, SIZE, 3), 11)).save(src / "frame.gif")
    Image.fromarray(noise((SIZE, SIZE, 3), 12)).save(src / "scan.tif")
    c.bad["frame.gif"] = ".gif images are not read"
    c.bad["scan.tif"] = ".tif images are not read"

    # a FIFO named like an image: opening it for reading would block forever
    os.mkfifo(src / "fifo.png")
    c.bad["fifo.png"] = "not a regular file (fifo)"
    # a folder named like an image is walked as a folder, not read as a file
    (src / "folder.png").mkdir()

    # An unreadable file. chmod 000 makes it unreadable for ordinary users; the tests run as
    # root here, for whom the kernel ignores the mode bits. So, as root only, os.open is
    # patched to fail for this one path exactly as the kernel does for a non-root user
    # (PermissionError, errno 13); the ingest's own read and error handling still run.
    unreadable = src / "unreadable.png"
    unreadable.write_bytes(png_bytes(noise((SIZE, SIZE, 3), 9)))
    unreadable.chmod(0)
    if os.geteuid() == 0:
        real_open = os.open
        target = os.path.realpath(unreadable)

        def open_as_non_root(path, flags, *args, **kwargs):
            if os.path.realpath(os.fspath(path)) == target:
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", open_as_non_root)
    c.bad["unreadable.png"] = "permission denied"

    (src / "notes.txt").write_text("not an image name: ignored, neither ingested nor quarantined")
    return c
