"""Finding labelled images in a folder and packing them into one uint8 array.

Layouts (:attr:`Scan.layout`), tried in this order:

- ``"labelled"``: ``DIR/normal/**/*.png`` are normal, ``DIR/anomaly/<defect>/**`` are
  labelled anomalies of that defect kind (defect masks may sit in ``DIR/masks/<defect>/``);
- ``"mvtec"`` (MVTec AD): ``DIR/train/good/**`` and ``DIR/test/good/**`` are normal,
  ``DIR/test/<defect>/**`` are anomalies of that kind (masks in ``DIR/ground_truth/<defect>/``);
  recognised by ``train/good/`` or ``test/good/``, or ``test/`` beside ``ground_truth/``;
- ``"flat"``: any other folder is a flat folder of unknowns.

A usable ``nuisance.csv`` at the top of ``DIR`` gives per-image numbers (exposure, camera
id, …): the listing then has an ``info`` column, each image's numbers as JSON ("" where the
file lists none; see :mod:`danvae.data.nuisance`).

Masks are never taken for images: not ``DIR/masks/`` or ``DIR/ground_truth/``, nor, in a
flat walk, a ``masks/`` next to a ``ground_truth.csv`` (the synthetic generator's) or a
``ground_truth/`` next to a ``test/`` (an MVTec AD category inside the folder).

Symlinks: a symlinked file that resolves inside ``DIR`` is listed; one that leaves
``DIR`` (or is broken) is refused and reported by :func:`scan`. Symlinked folders are
never descended into (one pointing outside ``DIR`` is reported), so a walk cannot loop
or escape the tree.

    found = discover("surfaces/")             # DataFrame path,label,defect
    packed = pack(found, size=64, channels=3)  # images N×H×W×C uint8, skipped files
    s = scan("surfaces/")                      # found + problems [(path, reason)], never raises
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from danvae.data.nuisance import INFO_COLUMN, read_nuisance_file
from danvae.images import IMAGE_SUFFIXES, ImageError, brightness, read_image

# Picture formats ingest does not read: quarantined with a reason rather than silently skipped.
UNSUPPORTED_IMAGE_SUFFIXES = (".gif", ".tif", ".tiff", ".webp")
MASKS_DIR = "masks"
MVTEC_MASKS_DIR = "ground_truth"
MVTEC_NORMAL = "good"
MVTEC_SPLITS = ("train", "test")
FOUND_COLUMNS = ["path", "label", "defect"]  # and INFO_COLUMN where the folder has a nuisance.csv


class DataError(ValueError):
    """The data a user pointed at cannot be used; the message says what to do."""


@dataclass
class Scan:
    """What a folder holds: usable candidates (``found``) and refused entries (``problems``)."""

    root: Path
    found: pd.DataFrame
    problems: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None  # the folder itself is unusable (missing, not a folder, unreadable)
    layout: str = "flat"  # "labelled" (normal/, anomaly/), "mvtec" (train/, test/) or "flat"


def _inside(path: str, root_real: str) -> bool:
    return path == root_real or path.startswith(root_real.rstrip(os.sep) + os.sep)


def printable_path(path: str | Path) -> str:
    """``path`` as valid UTF-8 text: bytes a file system allowed but UTF-8 cannot hold appear as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _utf8_name(path: Path) -> bool:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _walk(folder: Path, root_real: str, skip_top: set[str], problems: list[tuple[str, str]]) -> list[Path]:
    """Image-named entries under ``folder`` (sorted), without following symlinked folders."""
    out: list[Path] = []
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        problems.append((str(folder), f"folder unreadable: {exc.strerror or exc}"))
        return out
    for entry in entries:
        path = folder / entry.name
        is_image_name = Path(entry.name).suffix.lower() in IMAGE_SUFFIXES
        if not _utf8_name(path):
            # manifests, CSVs and MLflow hold text: such a name cannot be recorded; the file stays put
            problems.append((printable_path(path), "file name is not valid UTF-8; rename it to ingest it"))
            continue
        try:
            if entry.is_symlink():
                target = os.path.realpath(path)
                if not os.path.exists(target):
                    if is_image_name:
                        problems.append((str(path), f"broken symlink (points to {os.readlink(path)})"))
                    continue
                if not _inside(target, root_real):
                    if is_image_name or os.path.isdir(target):
                        problems.append((str(path), f"symlink points outside the source folder (to {target}); refused"))
                    continue
                if os.path.isdir(target):
                    continue  # a folder symlink inside the tree: its images are listed under their real path
                if is_image_name:
                    out.append(path)
            elif entry.is_dir(follow_symlinks=False):
                if entry.name in skip_top or (entry.name == MASKS_DIR and (folder / "ground_truth.csv").is_file()) \
                        or (entry.name == MVTEC_MASKS_DIR and (folder / "test").is_dir()):
                    continue  # defect masks (top level, next to a generator's ground_truth.csv, or MVTec's)
                out += _walk(path, root_real, set(), problems)
            elif is_image_name:
                out.append(path)  # regular or not (fifo, socket): the reader refuses non-regular files
            elif Path(entry.name).suffix.lower() in UNSUPPORTED_IMAGE_SUFFIXES:
                suffix = Path(entry.name).suffix.lower()
                problems.append((str(path), f"{suffix} images are not read; convert it to PNG "
                                            f"({', '.join(IMAGE_SUFFIXES)} are)"))
        except OSError as exc:
            problems.append((str(path), f"unreadable entry: {exc.strerror or exc}"))
    return out


def _is_mvtec(root: Path) -> bool:
    return any((root / split / MVTEC_NORMAL).is_dir() for split in MVTEC_SPLITS) \
        or ((root / "test").is_dir() and (root / MVTEC_MASKS_DIR).is_dir())


def _label_mvtec(rel: tuple[str, ...]) -> tuple[str, str]:
    """Label and defect of ``<split>/<rel...>``: ``good/`` is normal, another folder a defect."""
    if len(rel) == 1:
        return "unknown", ""  # directly in train/ or test/: MVTec AD puts nothing there
    return ("normal", "") if rel[0] == MVTEC_NORMAL else ("anomaly", rel[0])


def scan(data_dir: str | Path) -> Scan:
    """List the images under ``data_dir`` with label and defect; never raises for bad input."""
    root = Path(data_dir)
    empty = pd.DataFrame({c: pd.Series([], dtype=str) for c in FOUND_COLUMNS})
    if not root.exists():
        return Scan(root, empty, error="source folder does not exist" if not root.is_symlink() else "broken symlink")
    if not root.is_dir():
        return Scan(root, empty, error="source is not a folder")
    root_real = os.path.realpath(root)
    problems: list[tuple[str, str]] = []
    rows: list[dict] = []
    normal, anomaly = root / "normal", root / "anomaly"
    if normal.is_dir() or anomaly.is_dir():
        layout, subs = "labelled", [normal, anomaly]
    elif _is_mvtec(root):
        layout, subs = "mvtec", [root / split for split in MVTEC_SPLITS]
    else:
        layout, subs = "flat", []
    for sub in subs:
        if not sub.is_dir():
            continue
        if sub.is_symlink() and not _inside(os.path.realpath(sub), root_real):
            target = os.path.realpath(sub)
            problems.append((str(sub), f"symlink points outside the source folder (to {target}); refused"))
            continue
        for p in _walk(sub, root_real, set(), problems):
            rel = p.relative_to(sub).parts
            if layout == "mvtec":
                label, defect = _label_mvtec(rel)
            elif sub is normal:
                label, defect = "normal", ""
            else:
                label, defect = "anomaly", rel[0] if len(rel) > 1 else "unspecified"
            rows.append({"path": str(p), "label": label, "defect": defect})
    if layout == "flat":
        rows = [{"path": str(p), "label": "unknown", "defect": ""} for p in _walk(root, root_real, {MASKS_DIR}, problems)]
    found = pd.DataFrame(rows, columns=FOUND_COLUMNS) if rows else empty
    info, info_problems = read_nuisance_file(root)
    problems += info_problems
    if info:
        found[INFO_COLUMN] = [info.get(p, "") for p in found["path"]]
    return Scan(root, found, problems, layout=layout)


def discover(data_dir: str | Path, problems: list[tuple[str, str]] | None = None) -> pd.DataFrame:
    """List the images under ``data_dir`` with their label and defect kind; the entries it
    refused (a symlink leaving the folder, a name that is not UTF-8, …) are added to
    ``problems`` as (path, reason) when a list is given."""
    root = Path(data_dir)
    if not root.exists():
        raise DataError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    listing = scan(root)
    if problems is not None:
        problems.extend(listing.problems)
    found = listing.found
    if found.empty:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}")
    return found.reset_index(drop=True)


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
