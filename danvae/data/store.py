"""The content store: each image's original bytes kept once under ``store/<id[:2]>/<id><ext>``,
and reading files into it (in-process, or on a pool of worker processes).

    results = read_files([(path, mask_path), ...], size=64, channels=3, store="data", known=set())
    [r.status for r in results]      # "ok" (decoded and stored), "known" (content already held), "bad"

A file is read once: hashed, and unless its content is known, decoded, described and stored;
its defect mask is checked and stored the same way. A bad file never raises: it comes back
"bad" with a one-line reason.
"""
from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from tqdm import tqdm

from danvae.data.folders import DataError
from danvae.data.manifest import STORE, typed
from danvae.data.masks import MaskError, check_mask
from danvae.images import ImageError, brightness, decode_image, read_file_bytes
from danvae.process import pid_alive

log = logging.getLogger(__name__)

_EXT = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp"}
_PARALLEL_FROM = 400  # with workers > 1, fewer files than this are still read in-process


class FileRead(NamedTuple):
    """What reading one image file gave: ``status`` "ok", "known" (its content is already
    held; ``id`` set) or "bad" (``reason`` set); for "ok" the decoded image and what the
    manifest records of it."""

    status: str
    id: str = ""
    reason: str = ""
    image: np.ndarray | None = None
    width: int = 0
    height: int = 0
    channels: int = 0
    resized: bool = False
    stored_path: str = ""  # relative to the data folder
    mask_path: str = ""  # the stored mask, relative to the data folder; "" for none
    mask_problem: str = ""  # why a mask that was found is not used


_TEMP_NAME = re.compile(r"\.(\d+)\.(?:[A-Za-z0-9_]+\.)?tmp$")  # .<name>.<pid>[.<random>].tmp


def remove_stale_temp_files(out_dir: Path) -> list[Path]:
    """Delete the temp files a killed writer left in ``out_dir`` and its store (its pid is in the
    name and no longer runs); a live writer's, and anything in the users' folders, are left
    alone. Returns what was removed."""
    removed = []
    for tmp in [*out_dir.glob(".*.tmp"), *(out_dir / STORE).rglob(".*.tmp")]:
        found = _TEMP_NAME.search(tmp.name)
        if found and tmp.is_file() and not pid_alive(int(found.group(1))):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    if removed:
        log.warning("removed %d partial files left by a killed ingest", len(removed))
    return removed


def write_bytes_once(path: Path, data: bytes) -> None:
    """Content-addressed write: skip when present, else temp file + rename (safe under races)."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not leave a partial file in the store
        raise


_STATE: dict = {}


def _init_worker(size: int, channels: int, store: str | None, known: frozenset[str]) -> None:
    _STATE.update(size=size, channels=channels, store=store, known=known)


def read_file(job: tuple[str, str]) -> FileRead:
    """Read one file once: hash it, and unless already known decode, store and describe it.

    ``job`` = (image path, mask path or ""). Never raises for a bad file.
    """
    path, mask = job
    try:
        data = read_file_bytes(path)
        digest = hashlib.sha256(data).hexdigest()
        if digest in _STATE["known"]:
            return FileRead("known", digest)
        arr, info = decode_image(data, _STATE["size"], _STATE["channels"])
    except ImageError as exc:
        return FileRead("bad", reason=str(exc))
    except Exception as exc:  # noqa: BLE001 — whatever a file does, it must not stop the ingest
        return FileRead("bad", reason=f"cannot read image: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
    stored = mask_rel = mask_problem = ""
    store = _STATE["store"]
    if store is not None:
        stored = f"{STORE}/{digest[:2]}/{digest}{_EXT.get(info.format, Path(path).suffix.lower())}"
        write_bytes_once(Path(store) / stored, data)
        if mask:
            try:
                mdata = read_file_bytes(mask)
                check_mask(mdata, info.width, info.height)
            except ImageError as exc:
                mask_problem = f"mask unreadable: {str(exc).removeprefix('unreadable: ')}"
            except MaskError as exc:
                mask_problem = str(exc)
            else:
                mid = hashlib.sha256(mdata).hexdigest()
                mask_rel = f"{STORE}/{mid[:2]}/{mid}{Path(mask).suffix.lower()}"
                write_bytes_once(Path(store) / mask_rel, mdata)
    return FileRead("ok", digest, "", arr, info.width, info.height, info.channels, info.resized, stored, mask_rel,
                    mask_problem)


def read_files(jobs: list[tuple[str, str]], size: int, channels: int, store: str | None, known: set[str],
               workers: int | None = None, progress: bool = False) -> list[FileRead]:
    """:func:`read_file` over ``jobs``, in order (``store``: the data folder the store is under;
    None stores nothing). In-process by default: one core reads ~1000-1800
    64 px PNGs/s here, and a worker process must first import the package (torch included,
    ~3 s), so a pool only pays off for tens of thousands of images (``workers=2``)."""
    init = (size, channels, store, frozenset(known))
    bar = dict(total=len(jobs), desc="ingesting images", disable=not progress, leave=False)
    workers = 1 if workers is None else max(1, int(workers))
    if workers > 1 and len(jobs) >= _PARALLEL_FROM:
        # forkserver: workers are not forked from a possibly multi-threaded parent (Prefect, torch)
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        chunk = max(16, min(256, len(jobs) // (workers * 8) or 1))
        try:
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=init) as pool:
                return list(tqdm(pool.map(read_file, jobs, chunksize=chunk), **bar))
        except (BrokenProcessPool, OSError, RuntimeError) as exc:
            log.warning("worker pool failed (%s: %s); reading in-process instead", type(exc).__name__, exc)
    _init_worker(*init)
    return [read_file(j) for j in tqdm(jobs, **bar)]


def repack(out_dir: Path, manifest: pd.DataFrame, size: int, channels: int, workers: int | None,
            progress: bool) -> tuple[pd.DataFrame, np.ndarray]:
    """Decode every stored original again at ``size``/``channels`` (the store is the truth).

    A stored copy that is missing or damaged is restored from its source file when that
    still holds the same content; if any row can be restored from neither, nothing is
    changed and DataError says which — the manifest never loses a row.
    """
    jobs = [(str(out_dir / p), "") for p in manifest["stored_path"]]
    results = read_files(jobs, size, channels, None, set(), workers, progress)
    arrays, lost = [], []
    for (_, row), res in zip(manifest.iterrows(), results):
        arr = res.image if res.status == "ok" else _restore_from_source(row, size, channels, out_dir)
        if arr is None:
            lost.append(f"{row['stored_path']} ({res.reason or res.status}; source {row['path']} gone or changed)")
        else:
            arrays.append(arr)
    if lost:
        raise DataError(f"cannot re-pack at {size}px x {channels} channels: {len(lost)} stored "
                        f"cop{'y is' if len(lost) == 1 else 'ies are'} unusable and cannot be restored: "
                        f"{'; '.join(lost[:3])}{' ...' if len(lost) > 3 else ''}. Restore {out_dir / STORE} "
                        "(e.g. dvc pull) or go back to the previous image_size/channels; nothing was changed")
    images = np.stack(arrays) if arrays else np.zeros((0, size, size, channels), np.uint8)
    table = manifest.copy()
    table["row"] = np.arange(len(table))
    table["brightness"] = brightness(images) if len(images) else np.zeros(0)
    table["resized"] = (table["width"] != size) | (table["height"] != size)
    return typed(table), images


def _restore_from_source(row: pd.Series, size: int, channels: int, out_dir: Path) -> np.ndarray | None:
    """The row's image decoded from its source file, which goes back into the store, if the
    file still hashes to the row's id; else None."""
    try:
        data = read_file_bytes(str(row["path"]))
        if hashlib.sha256(data).hexdigest() != row["id"]:
            return None
        arr, _ = decode_image(data, size, channels)
    except (ImageError, OSError):
        return None
    stored = out_dir / row["stored_path"]
    stored.unlink(missing_ok=True)  # a damaged copy: write_bytes_once keeps what exists
    write_bytes_once(stored, data)
    log.warning("stored copy %s was unusable; restored from %s", row["stored_path"], row["path"])
    return arr
