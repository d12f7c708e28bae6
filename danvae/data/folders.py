"""Finding labelled images in a folder and packing them into one uint8 array.

Layout: ``DIR/normal/**/*.png`` are normal, ``DIR/anomaly/<defect>/**`` are labelled
anomalies of that defect kind; a folder with neither is a flat folder of unknowns.

    found = discover("surfaces/")             # DataFrame path,label,defect
    packed = pack(found, size=64, channels=3)  # images N×H×W×C uint8, skipped files
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from danvae.images import IMAGE_SUFFIXES, ImageError, brightness, read_image


class DataError(ValueError):
    """The data a user pointed at cannot be used; the message says what to do."""


def _images_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())


def discover(data_dir: str | Path) -> pd.DataFrame:
    """List the images under ``data_dir`` with their label and defect kind."""
    root = Path(data_dir)
    if not root.exists():
        raise DataError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    rows: list[dict] = []
    normal, anomaly = root / "normal", root / "anomaly"
    if normal.is_dir() or anomaly.is_dir():
        if normal.is_dir():
            rows += [{"path": str(p), "label": "normal", "defect": ""} for p in _images_under(normal)]
        if anomaly.is_dir():
            for p in _images_under(anomaly):
                rel = p.relative_to(anomaly).parts
                rows.append({"path": str(p), "label": "anomaly", "defect": rel[0] if len(rel) > 1 else "unspecified"})
    else:
        rows = [{"path": str(p), "label": "unknown", "defect": ""} for p in _images_under(root)]
    if not rows:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}")
    return pd.DataFrame(rows, columns=["path", "label", "defect"])


@dataclass
class Packed:
    """Images decoded once: ``images`` is N×H×W×C uint8, aligned with ``table`` rows."""

    images: np.ndarray
    table: pd.DataFrame
    skipped: list[tuple[str, str]] = field(default_factory=list)


def pack(found: pd.DataFrame, size: int, channels: int = 3, progress: bool = False) -> Packed:
    """Decode every listed image; unreadable ones are skipped with their reason."""
    arrays: list[np.ndarray] = []
    keep: list[int] = []
    skipped: list[tuple[str, str]] = []
    for i, path in enumerate(tqdm(found["path"], desc="reading images", disable=not progress, leave=False)):
        try:
            arr, _ = read_image(path, size, channels)
        except ImageError as exc:
            skipped.append((str(path), str(exc)))
            continue
        arrays.append(arr)
        keep.append(i)
    images = np.stack(arrays) if arrays else np.zeros((0, size, size, channels), np.uint8)
    table = found.iloc[keep].reset_index(drop=True).copy()
    table["brightness"] = brightness(images) if len(images) else np.zeros(0)
    return Packed(images, table, skipped)
