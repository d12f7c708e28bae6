"""Defect masks: finding each anomaly's mask in a source folder, checking it, and loading
stored masks aligned with manifest rows.

    paths = find_masks(scan("mvtec/bottle"))            # mask file or "" per found image
    check_mask(read_file_bytes(mask_file), 900, 900)    # bool H×W, or MaskError("mask not binary: 37 grey levels")
    masks = load_masks("data", manifest, image_size=64)  # bool N×64×64, True inside the defect
    masks[has_mask(manifest)]                           # only the rows that have a mask

Where masks are looked for (anomalies only; see :mod:`danvae.data.folders` for the layouts):

- ``"labelled"``: ``<source>/masks/<defect>/<image file name>``, or the same stem with
  another image extension (``x.jpg`` → ``x.png``);
- ``"mvtec"`` (MVTec AD): ``<source>/ground_truth/<defect>/<image stem>_mask.png`` (or
  another image extension).

A usable mask has the image's original width×height and is binary: every pixel 0 or one
single other value (0/255, 0/1, …), grayscale or RGB with equal channels. An all-zero
mask is allowed. Mask files, like images, must be regular files inside the source folder.
"""
from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from danvae.data.folders import MASKS_DIR, MVTEC_MASKS_DIR, Scan
from danvae.images import FORMATS, IMAGE_SUFFIXES, MAX_PIXELS, ImageError, read_file_bytes

log = logging.getLogger(__name__)

MASK_DIRS = {"labelled": MASKS_DIR, "mvtec": MVTEC_MASKS_DIR}  # layout -> folder of masks under the source
MVTEC_SUFFIX = "_mask"
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_VALUE_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "F", "RGB")  # read as they are


class MaskError(ValueError):
    """A mask file that cannot be used; the message is the one-line reason."""


# ----------------------------------------------------------------------------- finding
def _listing(folder: Path, root_real: str) -> dict[tuple[str, str], str]:
    """(stem, lower-case suffix) -> path of the image-named regular files in ``folder``
    that resolve inside the source folder (symlinks leaving it are ignored)."""
    out: dict[tuple[str, str], str] = {}
    try:
        names = sorted(e.name for e in os.scandir(folder))
    except FileNotFoundError:
        return out
    except OSError as exc:
        log.warning("mask folder %s unreadable (%s); its images are kept without masks", folder, exc)
        return out
    for name in names:
        stem, suffix = os.path.splitext(name)
        path = folder / name
        real = os.path.realpath(path)
        if suffix.lower() in IMAGE_SUFFIXES and real.startswith(root_real + os.sep) and os.path.isfile(real):
            out.setdefault((stem, suffix.lower()), str(path))
    return out


def find_masks(found: Scan) -> list[str]:
    """The mask file of each row of ``found.found`` ("" where there is none), by its layout."""
    out = [""] * len(found.found)
    folder = MASK_DIRS.get(found.layout)
    if folder is None or not (found.root / folder).is_dir():
        return out
    root_real = os.path.realpath(found.root).rstrip(os.sep)
    listings: dict[str, dict[tuple[str, str], str]] = {}
    rows = found.found[["path", "label", "defect"]].itertuples(index=False)
    for i, (path, label, defect) in enumerate(rows):
        if label != "anomaly" or not defect:
            continue
        if defect not in listings:
            listings[defect] = _listing(found.root / folder / defect, root_real)
        image = Path(path)
        if found.layout == "mvtec":
            keys = [(image.stem + MVTEC_SUFFIX, s) for s in IMAGE_SUFFIXES]
        else:
            keys = [(image.stem, image.suffix.lower())] + [(image.stem, s) for s in IMAGE_SUFFIXES]
        out[i] = next((listings[defect][k] for k in keys if k in listings[defect]), "")
    return out


# ----------------------------------------------------------------------------- checking
def _values(data: bytes, expect: tuple[int, int] | None = None) -> np.ndarray:
    """The mask's pixel values, H×W (colour masks with equal channels become one channel).

    ``expect`` (width, height) is checked from the header, before any pixel is decoded.
    """
    if not data:
        raise MaskError("mask unreadable: empty file (0 bytes)")
    img: Image.Image  # reassigned as it is converted: no longer the ImageFile it was opened as
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:
            width, height = img.size
            if expect is not None and (width, height) != tuple(expect):
                raise MaskError(f"mask {width}×{height} does not match image {expect[0]}×{expect[1]}")
            if width * height > MAX_PIXELS:
                raise MaskError(f"mask unreadable: decompression bomb: header claims {width}x{height} pixels")
            img.load()
            if img.mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            if img.mode in _ALPHA_MODES:  # transparent means background, as images are composited on black
                img = Image.alpha_composite(Image.new("RGBA", img.size, (0, 0, 0, 255)), img.convert("RGBA"))
            if img.mode not in _VALUE_MODES:
                img = img.convert("RGB")
            arr = np.asarray(img)
    except MaskError:
        raise
    except UnidentifiedImageError:
        raise MaskError("mask unreadable: not a recognised image format (PNG, JPEG or BMP)") from None
    except Exception as exc:  # noqa: BLE001 — any decoder failure is a property of this file
        detail = " ".join(str(exc).split())[:200]
        raise MaskError(f"mask unreadable: truncated or corrupt image ({type(exc).__name__}: {detail})") from None
    if arr.ndim == 3:
        if (arr != arr[..., :1]).any():
            raise MaskError("mask not binary: coloured (its channels differ)")
        arr = arr[..., 0]
    return arr.astype(np.uint8) if arr.dtype == bool else arr


def _binary(values: np.ndarray) -> np.ndarray:
    """True where a value is above half the mask's maximum (all False for an all-zero mask)."""
    return values > values.max() / 2 if values.size else np.zeros(values.shape, bool)


def check_mask(data: bytes, width: int, height: int) -> np.ndarray:
    """The mask in ``data`` as bool height×width, True inside the defect.

    Raises MaskError with a one-line reason: unreadable, "mask 30×30 does not match image
    64×64", "mask not binary: 17 grey levels", "mask not binary: coloured (its channels differ)".
    """
    values = _values(data, (width, height))
    levels = np.unique(values)
    if levels.size > 2 or (levels.size == 2 and levels[0] != 0):
        neither_zero = f" ({levels[0]} and {levels[1]}, neither is 0)" if levels.size == 2 else ""
        raise MaskError(f"mask not binary: {levels.size} grey levels{neither_zero}")
    return _binary(values)


# ----------------------------------------------------------------------------- loading
def has_mask(rows: pd.DataFrame) -> np.ndarray:
    """Bool per manifest row: whether ingest stored a mask for it."""
    return rows["mask_path"].fillna("").astype(str).ne("").to_numpy()


def load_masks(data_dir: str | Path, rows: pd.DataFrame, image_size: int) -> np.ndarray:
    """Stored masks of manifest ``rows`` as bool N×image_size×image_size, True inside the defect.

    Resized like the images (to a square) with nearest-neighbour, then cut at half the
    mask's maximum. Rows without a mask, or whose stored mask is missing or unreadable
    (logged as a warning), get an all-False mask; this never raises for a bad file.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    out = np.zeros((len(rows), image_size, image_size), bool)
    cache: dict[str, np.ndarray | None] = {}  # masks are stored by content: rows may share one
    bad: list[str] = []
    for i, rel in enumerate(rows["mask_path"].fillna("").astype(str)):
        if not rel:
            continue
        if rel not in cache:
            try:
                mask = Image.fromarray(_binary(_values(read_file_bytes(Path(data_dir) / rel))).astype(np.uint8) * 255)
                cache[rel] = np.asarray(mask.resize((image_size, image_size), Image.Resampling.NEAREST)) > 127
            except (ImageError, MaskError) as exc:
                cache[rel] = None
                bad.append(f"{rel} ({exc})")
        if cache[rel] is not None:
            out[i] = cache[rel]
    if bad:
        log.warning("%d stored masks missing or unreadable, used as empty: %s%s", len(bad), "; ".join(bad[:3]),
                    " …" if len(bad) > 3 else "")
    return out
