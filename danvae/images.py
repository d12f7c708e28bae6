"""Reading surface images from disk into fixed-size uint8 arrays, and their brightness.

    arr, info = read_image("scratch_01.png", size=64, channels=3)   # H×W×C uint8
    y = brightness(arr)                                            # mean of max(R,G,B)/255

``decode_image(data, size, channels)`` does the same from bytes already in memory (the
ingest reads each file once, hashes the bytes and decodes them from memory).

Every unusable input raises :class:`ImageError` whose message is a one-line reason for
people: empty, too large, not a regular file, not an image, truncated or corrupt, a
decompression bomb (refused from the header, before any pixel is decoded), unreadable.
"""
from __future__ import annotations

import io
import os
import stat
from struct import error as struct_error
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
FORMATS = ("PNG", "JPEG", "BMP")  # decoders allowed; anything else is "not a recognised image format"
MAX_PIXELS = 64_000_000  # larger images are refused as decompression bombs (checked from the header)
MAX_FILE_BYTES = 512 * 1024**2  # larger files are refused before being read

_SOURCE_CHANNELS = {"1": 1, "L": 1, "I": 1, "F": 1, "LA": 2, "La": 2, "P": 3, "PA": 4, "RGB": 3,
                    "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4, "YCbCr": 3, "LAB": 3, "HSV": 3}


class ImageError(ValueError):
    """An image file that cannot be used; the message is the reason, for people."""


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    channels: int
    mode: str
    resized: bool
    format: str = ""  # decoder that read it: PNG, JPEG or BMP


def _one_line(text: object, limit: int = 200) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _to_8bit(img: Image.Image) -> Image.Image:
    """Map 16/32-bit integer and float images onto 0..255 by scaling, never by clipping.

    16-bit: 65535 → 255, 32768 → 128. A PNG in mode "I" is always 16-bit grayscale.
    """
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.asarray(img)
        if img.mode == "F":
            arr = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
            hi = 1.0 if arr.size and arr.max() <= 1.0 else 65535.0 if arr.size and arr.max() > 255 else 255.0
            out = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        else:
            sixteen = img.mode.startswith("I;16") or img.format == "PNG" or (arr.size and arr.max() > 255)
            hi = 65535 if sixteen else 255
            wide = np.clip(arr.astype(np.int64), 0, hi)
            out = ((wide * 255 + hi // 2) // hi).astype(np.uint8)
        return Image.fromarray(out, "L")
    return img


def decode_image(data: bytes, size: int, channels: int = 3) -> tuple[np.ndarray, ImageInfo]:
    """Decode image file bytes into a ``size×size×channels`` uint8 array.

    Grayscale, 16-bit (scaled), palette, RGBA/LA (composited on black) and CMYK are
    accepted; an image of another size is resized (``info.resized``), not refused.
    Raises ImageError with a one-line reason for anything unusable.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if not data:
        raise ImageError("empty file (0 bytes)")
    img: Image.Image  # reassigned as it is converted: no longer the ImageFile it was opened as
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as img:
                width, height = img.size
                if width <= 0 or height <= 0:
                    raise ImageError(f"corrupt image: header claims {width}x{height} pixels")
                if width * height > MAX_PIXELS:
                    raise ImageError(
                        f"decompression bomb: header claims {width}x{height} pixels, over the limit of {MAX_PIXELS}"
                    )
                mode, fmt = img.mode, img.format or ""
                if img.format == "JPEG" and (width > 2 * size or height > 2 * size):
                    img.draft(img.mode, (size, size))  # decode at a reduced scale: much faster, same result size
                img.load()
                img = ImageOps.exif_transpose(img)  # a camera's "rotate on display" tag: pixels as shown
                has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
                img = _to_8bit(img)
                if has_alpha and img.mode not in ("L", "RGB"):
                    img = img.convert("RGBA")
                    background = Image.new("RGBA", img.size, (0, 0, 0, 255))
                    img = Image.alpha_composite(background, img)
                img = img.convert("L" if channels == 1 else "RGB")
                resized = (width, height) != (size, size)
                if img.size != (size, size):
                    img = img.resize((size, size), Image.Resampling.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"decompression bomb: {_one_line(exc)}") from None
    except UnidentifiedImageError:
        raise ImageError("not a recognised image format (PNG, JPEG or BMP)") from None
    except MemoryError:
        raise ImageError("image too large to decode in memory") from None
    except OSError as exc:
        raise ImageError(f"truncated or corrupt image: {_one_line(exc)}") from None
    except (ValueError, SyntaxError, EOFError, IndexError, TypeError, struct_error) as exc:
        raise ImageError(f"corrupt image: {_one_line(exc)}") from None
    except Exception as exc:  # any other decoder failure is still a property of this file
        raise ImageError(f"cannot decode image: {type(exc).__name__}: {_one_line(exc)}") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    source_channels = _SOURCE_CHANNELS.get(mode, 1)
    if mode == "P" and has_alpha:
        source_channels = 4
    return arr, ImageInfo(width, height, source_channels, mode, resized, fmt)


_READ_FAILURES = ((FileNotFoundError, "file not found (or a broken symlink)"),
                  (PermissionError, "unreadable: permission denied"),
                  (IsADirectoryError, "is a folder, not an image file"))


def read_file_bytes(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of one regular file; ImageError with a reason for anything else.

    Symlinks are followed (callers that must not follow them check first). A FIFO,
    socket or device is refused without being opened, so a reader never blocks.
    """
    path = Path(path)
    try:
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            raise ImageError("is a folder, not an image file")
        if not stat.S_ISREG(st.st_mode):
            kind = "fifo" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode) else "device"
            raise ImageError(f"not a regular file ({kind})")
        if st.st_size == 0:
            raise ImageError("empty file (0 bytes)")
        if st.st_size > max_bytes:
            raise ImageError(f"file too large ({st.st_size} bytes, limit {max_bytes})")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        reason = next((text for kind, text in _READ_FAILURES if isinstance(exc, kind)), None)
        raise ImageError(reason or f"unreadable: {_one_line(exc.strerror or exc)}") from None
    if not data:
        raise ImageError("empty file (0 bytes)")
    if len(data) > max_bytes:
        raise ImageError(f"file too large (over {max_bytes} bytes)")
    return data


def read_image(path: str | Path, size: int, channels: int = 3) -> tuple[np.ndarray, ImageInfo]:
    """Decode one image file into a ``size×size×channels`` uint8 array.

    Raises ImageError with a one-line reason for anything unusable (empty, truncated,
    not an image, a decompression bomb, unreadable, not a regular file).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    return decode_image(read_file_bytes(path), size, channels)


def brightness(images: np.ndarray) -> Any:
    """Mean over pixels of the HSV value channel (max over colour channels), in [0, 1].

    Accepts one H×W×C image (a float comes back) or a batch N×H×W×C (an N array), uint8.
    """
    arr = np.asarray(images)
    # max over a short last axis is slow in numpy; an elementwise maximum over the channel planes is not
    value = np.maximum.reduce([arr[..., c] for c in range(arr.shape[-1])]) if arr.shape[-1] > 1 else arr[..., 0]
    out = value.mean(axis=(-2, -1), dtype=np.float64) / 255.0
    return float(out) if arr.ndim == 3 else out


def fit_to(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Bring a uint8 batch N×H×W(×C) of any size to N×size×size×channels, as training saw them."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise ValueError(f"expected images shaped N×H×W×C, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    if arr.shape[1:] == (size, size, channels):
        return arr
    out = np.empty((len(arr), size, size, channels), np.uint8)
    for i, a in enumerate(arr):
        img = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a[..., :3])
        img = img.convert("L" if channels == 1 else "RGB").resize((size, size), Image.Resampling.BILINEAR)
        out[i] = np.asarray(img).reshape(size, size, channels)
    return out
