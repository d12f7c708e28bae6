"""The data set on disk: the manifest's schema, its files, and reading them back.

    manifest, images = load_manifest("data"), load_images("data")    # images[row]

Layout under ``out_dir``:

- ``manifest.parquet``: one row per distinct image content, columns :data:`MANIFEST_COLUMNS`
  (dtypes :data:`MANIFEST_DTYPES`);
- ``images.npy``: packed uint8 ``N×S×S×C``; manifest row with ``row == i`` is ``images[i]``;
- ``store/<id[:2]>/<id><ext>``: each image's original bytes, once per content
  (``stored_path`` is relative to ``out_dir``); defect masks are stored the same way and
  ``mask_path`` (relative to ``out_dir``, or "") points at the stored copy. Where masks
  are found and what a usable one is: :mod:`danvae.data.masks`; read them back with
  :func:`danvae.data.masks.load_masks`;
- ``quarantine.csv``: path, reason, batch, seen_at, file_mtime of every refused file (appended;
  the same path and reason is recorded once);
- ``duplicates.csv``: path, id, duplicate_of, note, batch, seen_at.

Every file here is replaced atomically (:func:`danvae.files.atomic_write`: a temp file named
after the writer's pid, then ``os.replace``), so a crash leaves the previous version usable.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd

from danvae.data.folders import DataError
from danvae.data.nuisance import INFO_COLUMN
from danvae.files import atomic_write

log = logging.getLogger(__name__)

LABELS = ("normal", "anomaly", "unknown")
SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ["id", "path", "source", "label", "defect", "brightness", "width", "height", "channels",
                    "resized", "split", "batch", "ingested_at", "row", "stored_path", "mask_path", INFO_COLUMN]
MANIFEST_DTYPES = {"brightness": "float64", "width": "int64", "height": "int64", "channels": "int64",
                   "resized": "bool", "row": "int64"}  # every other column is text
QUARANTINE_COLUMNS = ["path", "reason", "batch", "seen_at", "file_mtime"]
DUPLICATE_COLUMNS = ["path", "id", "duplicate_of", "note", "batch", "seen_at"]
MANIFEST, IMAGES, STORE = "manifest.parquet", "images.npy", "store"
QUARANTINE, DUPLICATES = "quarantine.csv", "duplicates.csv"


def empty_table(columns: Sequence[str]) -> pd.DataFrame:
    """No rows, the given columns, each with its manifest dtype (text where it has none)."""
    return pd.DataFrame({c: pd.Series([], dtype=MANIFEST_DTYPES.get(c, str)) for c in columns})


def typed(df: pd.DataFrame) -> pd.DataFrame:
    """The manifest's columns, in order, with their dtypes, indexed 0..n-1."""
    df = df[MANIFEST_COLUMNS].copy()
    for c in MANIFEST_COLUMNS:
        df[c] = df[c].astype(MANIFEST_DTYPES.get(c, str))
    return df.reset_index(drop=True)


def load_manifest(out_dir: str | Path) -> pd.DataFrame:
    """The manifest under ``out_dir`` (an empty one with the right columns when there is none)."""
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return empty_table(MANIFEST_COLUMNS)
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 — a corrupt manifest is named, not dumped as a traceback
        raise DataError(f"{path} is unreadable ({type(exc).__name__}: {exc}); restore it (dvc checkout) "
                        f"or delete {out_dir} to ingest afresh") from None
    if INFO_COLUMN not in df.columns:  # a manifest written before nuisance.csv was read
        df[INFO_COLUMN] = ""
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path} lacks columns {missing}; it was written by another version, delete it to re-ingest")
    return typed(df.sort_values("row"))


def load_images(out_dir: str | Path) -> np.ndarray:
    """Packed images N×S×S×C uint8; row ``i`` is the manifest row with ``row == i``."""
    out_dir = Path(out_dir)
    path = out_dir / IMAGES
    if not path.exists():
        raise DataError(f"{path} does not exist; run the ingest first")
    images = np.load(path, allow_pickle=False)
    n = len(load_manifest(out_dir))
    if len(images) < n:
        raise DataError(f"{path} holds {len(images)} images but the manifest lists {n}; run the ingest again")
    return images[:n]


def write_images(path: Path, old: np.ndarray | None, new: np.ndarray) -> None:
    """images.npy = old rows then new rows, streamed into a temp file and renamed."""
    n_old = 0 if old is None else len(old)

    def write(tmp: Path) -> None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n_old + len(new), *new.shape[1:]))
        step = 4096
        for i in range(0, n_old, step):  # n_old is 0 when old is None
            j = min(i + step, n_old)
            out[i:j] = cast(np.ndarray, old)[i:j]
        out[n_old:] = new
        out.flush()
        del out

    atomic_write(path, write)


def existing_images(out_dir: Path, manifest: pd.DataFrame, size: int, channels: int) -> np.ndarray | None:
    """The packed images if they match the manifest and the requested shape, else None."""
    path = out_dir / IMAGES
    if not path.exists():
        return None
    try:
        images = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s); re-packing from the store", path, exc)
        return None
    aligned = (manifest["row"].to_numpy() == np.arange(len(manifest))).all()
    if images.dtype != np.uint8 or images.shape[1:] != (size, size, channels) or len(images) < len(manifest) \
            or not aligned:
        return None
    return images[:len(manifest)]


def append_csv(path: Path, new: pd.DataFrame, columns: list[str], key: list[str], refresh: str | None = None
                ) -> None:
    """Append rows to a CSV log, keeping the first record of each ``key``; always leaves the file.
    ``refresh``: a column that takes the newest value of its key (the other columns keep the first)."""
    old = empty_table(columns)
    if path.exists():
        try:
            old = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
            log.warning("%s is unreadable (%s); starting it afresh", path, exc)
        for c in columns:
            if c not in old.columns:
                old[c] = ""
    both = pd.concat([old[columns], new[columns].astype(str)], ignore_index=True)
    if refresh is not None:
        both[refresh] = both.groupby(key, sort=False)[refresh].transform("max")
    both = both.drop_duplicates(key, keep="first")
    if path.exists() and both.reset_index(drop=True).equals(old[columns].reset_index(drop=True)):
        return
    atomic_write(path, lambda tmp: both.to_csv(tmp, index=False))
