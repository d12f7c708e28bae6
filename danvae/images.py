"""Reading surface images from disk into fixed-size uint8 arrays, and their brightness.

    arr, info = read_image("scratch_01.png", size=64, channels=3)   # H×W×C uint8
    y = brightness(arr)                                            # mean of max(R,G,B)/255
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
MAX_PIXELS = 64_000_000  # larger images are refused as decompression bombs


class ImageError(ValueError):
    """An image file that cannot be used; the message is the reason, for people."""


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    channels: int
    mode: str
    resized: bool


def _to_8bit(img: Image.Image) -> Image.Image:
    """Map 16/32-bit integer and float images onto 0..255 without clipping them."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F" and arr.max() <= 1.0:
            hi = 1.0
        return Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return img


def read_image(path: str | Path, size: int, channels: int = 3) -> tuple[np.ndarray, ImageInfo]:
    """Decode one image into a ``size×size×channels`` uint8 array.

    Raises ImageError with a one-line reason for anything unusable (empty, truncated,
    not an image, a decompression bomb, unreadable).
    """
    path = Path(path)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    try:
        if path.stat().st_size == 0:
            raise ImageError("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise ImageError(f"decompression bomb: {width}x{height} pixels exceeds {MAX_PIXELS}")
                img.load()
                mode = img.mode
                img = _to_8bit(img)
                if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                    img = img.convert("RGBA")
                    background = Image.new("RGBA", img.size, (0, 0, 0, 255))
                    img = Image.alpha_composite(background, img)
                img = img.convert("L" if channels == 1 else "RGB")
                resized = img.size != (size, size)
                if resized:
                    img = img.resize((size, size), Image.Resampling.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise ImageError("not a recognised image format") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except OSError as exc:
        raise ImageError(f"unreadable or truncated image: {exc}") from None
    except (ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"corrupt image: {exc}") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    source_channels = {"L": 1, "1": 1, "P": 3, "RGB": 3, "RGBA": 4, "LA": 2, "CMYK": 4}.get(mode, 1)
    return arr, ImageInfo(width, height, source_channels, mode, resized)


def brightness(images: np.ndarray) -> np.ndarray | float:
    """Mean over pixels of the HSV value channel (max over colour channels), in [0, 1].

    Accepts one H×W×C image or a batch N×H×W×C, uint8.
    """
    arr = np.asarray(images)
    value = arr.max(axis=-1).astype(np.float64) / 255.0
    out = value.mean(axis=(-2, -1))
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
