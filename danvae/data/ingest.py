"""Folder ingest into a content-addressed store, a manifest and a packed image cache.

    found = materialize_sources(cfg.data.sources, Path("data/raw"))   # danvae.data.sources
    result = ingest(found, Path("data"), image_size=64, channels=3, split=cfg.data.split)
    print(result.summary())
    manifest, images = load_manifest("data"), load_images("data")    # danvae.data.manifest

What it writes under ``out_dir`` (the manifest, packed images, the content store, the
quarantine and duplicate logs): :mod:`danvae.data.manifest`.

Rules: ``id`` is the sha256 of the file bytes; content already in the manifest is not
stored or packed again (another path with it is a duplicate; the same path again is
"unchanged"), so ingesting a folder twice adds nothing. The split comes from the id
alone (:mod:`danvae.data.splits`). Bad files (and missing or empty source folders)
never stop an ingest: each is quarantined with a one-line reason. A bad mask (unreadable,
another size than its image, not binary) is quarantined under the mask's path and its
image is ingested without a mask. Every file under ``out_dir`` is replaced atomically
(temp file + ``os.replace``), the images before the manifest, and rows are only
appended, so a crash leaves the previous manifest usable.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from danvae.config import SplitShares
from danvae.data.folders import scan
from danvae.data.manifest import (DUPLICATE_COLUMNS, DUPLICATES, IMAGES, MANIFEST, MANIFEST_COLUMNS,
                                  QUARANTINE, QUARANTINE_COLUMNS, STORE, append_csv, empty_table,
                                  existing_images, load_manifest, typed, write_images)
from danvae.data.masks import find_masks
from danvae.data.nuisance import INFO_COLUMN
from danvae.data.splits import split_of_many
from danvae.data.store import FileRead, read_files, remove_stale_temp_files, repack
from danvae.files import atomic_write
from danvae.images import brightness

log = logging.getLogger(__name__)

EMPTY_SOURCE = "no images in source folder"


@dataclass
class IngestResult:
    manifest: pd.DataFrame  # the whole manifest after this ingest (old rows + new)
    added: pd.DataFrame  # rows added by this call
    quarantine: pd.DataFrame  # path, reason: this call's refused files and folders
    duplicates: pd.DataFrame  # path, id, duplicate_of, note: content already stored under another path
    unchanged: int = 0  # files already in the manifest under the same path (a re-ingest)
    rebuilt: bool = False  # images.npy was re-packed from the store (image size or channels changed)
    seconds: float = 0.0

    def summary(self) -> str:
        by_split = self.added["split"].value_counts().to_dict() if len(self.added) else {}
        return (f"{len(self.added)} added {by_split}, {self.unchanged} already ingested, "
                f"{len(self.duplicates)} duplicates, {len(self.quarantine)} quarantined; "
                f"manifest holds {len(self.manifest)} images" + (" (re-packed)" if self.rebuilt else ""))


def _now() -> datetime:
    return datetime.now(UTC)


def _mtime(path: str) -> str:
    """A refused file's modification time (UTC, to the microsecond), "" where it has none;
    the new-image finder takes a file refused at this mtime as not new."""
    try:
        return datetime.fromtimestamp(os.stat(path).st_mtime, UTC).isoformat(timespec="microseconds")
    except (OSError, ValueError):
        return ""


class Candidate(NamedTuple):
    """An image file a source lists, with what the listing says of it."""

    source: str
    path: str
    label: str
    defect: str
    info: str  # the file's nuisance.csv values as JSON, or ""
    mask: str  # its defect mask file, or ""


def _packed_images(out_dir: Path, manifest: pd.DataFrame, size: int, channels: int, workers: int | None,
                   progress: bool) -> tuple[pd.DataFrame, np.ndarray | None, bool]:
    """The manifest, its packed images (re-packed from the store when their size or channels
    differ from the request) and whether they were re-packed."""
    images = existing_images(out_dir, manifest, size, channels)
    if images is not None or not len(manifest):
        return manifest, images, False
    log.warning("re-packing %d stored images at %dpx x %d channels", len(manifest), size, channels)
    manifest, repacked = repack(out_dir, manifest, size, channels, workers, progress)
    write_images(out_dir / IMAGES, None, repacked)
    return manifest, np.load(out_dir / IMAGES, mmap_mode="r"), True


def _candidates(folders: Iterable[tuple[str, str | Path]], out_dir: Path
                ) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """Every image file of every source, in listing order, and what to quarantine (path, reason)."""
    store_real = os.path.realpath(out_dir / STORE) + os.sep
    candidates: list[Candidate] = []
    quarantine: list[tuple[str, str]] = []
    for name, folder in folders:
        found = scan(folder)
        if found.error:
            log.warning("source %s: %s (%s)", name, found.error, folder)
            quarantine.append((str(folder), found.error))
            continue
        quarantine += found.problems
        if found.found.empty:
            log.warning("source %s: %s (%s)", name, EMPTY_SOURCE, folder)
            quarantine.append((str(folder), EMPTY_SOURCE))
            continue
        masks = find_masks(found)
        listing = found.found if INFO_COLUMN in found.found else found.found.assign(**{INFO_COLUMN: ""})
        listed = listing[["path", "label", "defect", INFO_COLUMN]].itertuples(index=False)
        for (path, label, defect, info), mask in zip(listed, masks):
            if os.path.realpath(path).startswith(store_real):
                continue  # our own store, reached through a source that contains out_dir
            candidates.append(Candidate(str(name), path, label, defect, info, mask))
    return candidates, quarantine


@dataclass
class _Outcome:
    """What the files read in one ingest come to: new rows and their images, duplicates, refusals."""

    rows: list[dict] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    duplicates: list[tuple[str, str, str, str]] = field(default_factory=list)  # path, id, duplicate_of, note
    quarantine: list[tuple[str, str]] = field(default_factory=list)
    unchanged: int = 0


def _decide(candidates: list[Candidate], results: list[FileRead], manifest: pd.DataFrame, batch: str,
            stamp: str) -> _Outcome:
    """New row, duplicate, unchanged or quarantined, for each file in listing order (so the
    outcome does not depend on worker timing)."""
    known_path = dict(zip(manifest["id"], manifest["path"]))
    known_label = dict(zip(manifest["id"], manifest["label"] + "/" + manifest["defect"]))
    out = _Outcome()
    for c, res in zip(candidates, results):
        if res.status == "bad":
            out.quarantine.append((c.path, res.reason))
            continue
        if res.id in known_path:
            if known_path[res.id] == c.path:
                out.unchanged += 1
            else:
                theirs, ours = known_label[res.id], f"{c.label}/{c.defect}"
                note = "" if theirs == ours else f"label differs: {ours.rstrip('/')} here, {theirs.rstrip('/')} stored"
                out.duplicates.append((c.path, res.id, known_path[res.id], note))
            continue
        if res.mask_problem:
            out.quarantine.append((c.mask, f"{res.mask_problem}; image kept without a mask"))
        known_path[res.id], known_label[res.id] = c.path, f"{c.label}/{c.defect}"
        out.rows.append(dict(id=res.id, path=c.path, source=c.source, label=c.label, defect=c.defect,
                             width=res.width, height=res.height, channels=res.channels, resized=res.resized,
                             batch=batch, ingested_at=stamp, row=len(manifest) + len(out.rows),
                             stored_path=res.stored_path, mask_path=res.mask_path, info=c.info))
        if res.image is None:  # an ok read always carries its pixels
            raise RuntimeError(f"{c.path}: read as ok but no pixels came back")
        out.images.append(res.image)
    return out


def _log_refusals(out_dir: Path, quarantine: list[tuple[str, str]], duplicates: list[tuple[str, str, str, str]],
                  batch: str, stamp: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Append this ingest's quarantined files and duplicates to their CSV logs; both tables."""
    q = pd.DataFrame(quarantine, columns=["path", "reason"]).drop_duplicates(ignore_index=True)
    d = pd.DataFrame(duplicates, columns=["path", "id", "duplicate_of", "note"])
    for frame in (q, d):
        frame["batch"], frame["seen_at"] = batch, stamp
    q["file_mtime"] = [_mtime(p) for p in q["path"]]
    append_csv(out_dir / QUARANTINE, q, QUARANTINE_COLUMNS, ["path", "reason"], refresh="file_mtime")
    append_csv(out_dir / DUPLICATES, d, DUPLICATE_COLUMNS, ["path", "id"])
    for path, reason in q[["path", "reason"]].head(20).itertuples(index=False, name=None):
        log.info("quarantined %s: %s", path, reason)
    return q[["path", "reason"]], d[["path", "id", "duplicate_of", "note"]]


def ingest(folders: Iterable[tuple[str, str | Path]], out_dir: str | Path, image_size: int, channels: int = 3,
           split: SplitShares | None = None, batch: str | None = None, progress: bool = False,
           workers: int | None = None) -> IngestResult:
    """Add the images of ``folders`` ((source name, folder) pairs) to the data set under ``out_dir``.

    A missing, non-folder or empty source folder is quarantined (reason "source folder does
    not exist", "source is not a folder", "no images in source folder") and the other sources
    are still ingested. Files under ``out_dir/store`` are never taken as new images.
    ``workers``: processes that read, hash and decode (default: in-process, which is the
    fastest below tens of thousands of images; see :func:`danvae.data.store.read_files`).

    Raises only for unusable arguments, an unreadable existing manifest (DataError) or a
    failing disk (OSError, with the previous manifest left intact), never for a bad image file.
    A file whose content changed under the same path gets a new row (new id); the old row stays.
    """
    start = _now()
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    split = split or SplitShares()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out_dir)
    batch = batch or start.strftime("%Y%m%dT%H%M%SZ")
    stamp = start.isoformat(timespec="seconds")

    manifest, old_images, rebuilt = _packed_images(out_dir, load_manifest(out_dir), image_size, channels, workers,
                                                   progress)
    candidates, quarantine = _candidates(folders, out_dir)
    results = read_files([(c.path, c.mask) for c in candidates], image_size, channels, str(out_dir),
                         set(manifest["id"]), workers, progress)
    outcome = _decide(candidates, results, manifest, batch, stamp)

    # images first, manifest last (rows are append-only)
    added = empty_table(MANIFEST_COLUMNS)
    if outcome.rows:
        new_images = np.stack(outcome.images)
        added = pd.DataFrame(outcome.rows)
        added["brightness"] = brightness(new_images)
        added["split"] = split_of_many(added["id"], split)
        added = typed(added)
        write_images(out_dir / IMAGES, old_images, new_images)
        manifest = typed(pd.concat([manifest, added], ignore_index=True)) if len(manifest) else added
    elif not (out_dir / IMAGES).exists():
        write_images(out_dir / IMAGES, None, np.zeros((0, image_size, image_size, channels), np.uint8))
    if outcome.rows or rebuilt or not (out_dir / MANIFEST).exists():
        atomic_write(out_dir / MANIFEST, lambda tmp: manifest.to_parquet(tmp, index=False))

    q, d = _log_refusals(out_dir, quarantine + outcome.quarantine, outcome.duplicates, batch, stamp)
    result = IngestResult(manifest, added, q, d, outcome.unchanged, rebuilt, (_now() - start).total_seconds())
    log.info("ingest: %s", result.summary())
    return result
