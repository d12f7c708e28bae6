"""Folder ingest into a content-addressed store, a manifest and a packed image cache.

    found = materialize_sources(cfg.data.sources, Path("data/raw"))   # [(name, folder)]
    result = ingest(found, Path("data"), image_size=64, channels=3, split=cfg.data.split)
    print(result.summary())
    manifest, images = load_manifest("data"), load_images("data")    # images[row]

Layout under ``out_dir``:

- ``manifest.parquet``: one row per distinct image content, columns :data:`MANIFEST_COLUMNS`;
- ``images.npy``: packed uint8 ``N×S×S×C``; manifest row with ``row == i`` is ``images[i]``;
- ``store/<id[:2]>/<id><ext>``: each image's original bytes, once per content
  (``stored_path`` is relative to ``out_dir``); defect masks are stored the same way and
  ``mask_path`` (relative to ``out_dir``, or "") points at the stored copy. Where masks
  are found and what a usable one is: :mod:`danvae.data.masks`; read them back with
  :func:`danvae.data.masks.load_masks`;
- ``quarantine.csv``: path, reason, batch, seen_at of every refused file (appended;
  the same path and reason is recorded once);
- ``duplicates.csv``: path, id, duplicate_of, note, batch, seen_at.

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

import functools
import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from danvae.config import FolderSource, SplitShares, SyntheticSource
from danvae.data.folders import DataError, scan
from danvae.data.masks import MaskError, check_mask, find_masks
from danvae.data.nuisance import INFO_COLUMN
from danvae.data.splits import split_of_many
from danvae.images import ImageError, brightness, decode_image, read_file_bytes
from danvae.process import pid_alive

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["id", "path", "source", "label", "defect", "brightness", "width", "height", "channels",
                    "resized", "split", "batch", "ingested_at", "row", "stored_path", "mask_path", INFO_COLUMN]
_DTYPES = {"brightness": "float64", "width": "int64", "height": "int64", "channels": "int64",
           "resized": "bool", "row": "int64"}  # every other column is text
QUARANTINE_COLUMNS = ["path", "reason", "batch", "seen_at", "file_mtime"]
DUPLICATE_COLUMNS = ["path", "id", "duplicate_of", "note", "batch", "seen_at"]

MANIFEST, IMAGES, STORE = "manifest.parquet", "images.npy", "store"
QUARANTINE, DUPLICATES = "quarantine.csv", "duplicates.csv"
EMPTY_SOURCE = "no images in source folder"
_EXT = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp"}
_PARALLEL_FROM = 400  # with workers > 1, fewer files than this are still read in-process


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


# ----------------------------------------------------------------------------- small helpers
def _now() -> datetime:
    return datetime.now(UTC)


def _mtime(path: str) -> str:
    """A refused file's modification time (UTC, to the microsecond), "" where it has none;
    the new-image finder takes a file refused at this mtime as not new."""
    try:
        return datetime.fromtimestamp(os.stat(path).st_mtime, UTC).isoformat(timespec="microseconds")
    except (OSError, ValueError):
        return ""


def _empty(columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=_DTYPES.get(c, str)) for c in columns})


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    df = df[MANIFEST_COLUMNS].copy()
    for c in MANIFEST_COLUMNS:
        df[c] = df[c].astype(_DTYPES.get(c, str))
    return df.reset_index(drop=True)


@functools.cache
def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; once per process
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temp file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the data set is shared like any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def _write_bytes_once(path: Path, data: bytes) -> None:
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


def _append_csv(path: Path, new: pd.DataFrame, columns: list[str], key: list[str], refresh: str | None = None
                ) -> None:
    """Append rows to a CSV log, keeping the first record of each ``key``; always leaves the file.
    ``refresh``: a column that takes the newest value of its key (the other columns keep the first)."""
    old = _empty(columns)
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
    _atomic_write(path, lambda tmp: both.to_csv(tmp, index=False))


# ----------------------------------------------------------------------------- reading (in workers)
_STATE: dict = {}


def _init_worker(size: int, channels: int, store: str | None, known: frozenset[str]) -> None:
    _STATE.update(size=size, channels=channels, store=store, known=known)


def _process(job: tuple[str, str]) -> tuple:
    """Read one file once: hash it, and unless already known decode, store and describe it.

    ``job`` = (image path, mask path or ""). Returns ("bad", reason) | ("known", id) |
    ("ok", id, image, width, height, channels, resized, stored_rel, mask_rel, mask_problem).
    Never raises for a bad file.
    """
    path, mask = job
    try:
        data = read_file_bytes(path)
        digest = hashlib.sha256(data).hexdigest()
        if digest in _STATE["known"]:
            return ("known", digest)
        arr, info = decode_image(data, _STATE["size"], _STATE["channels"])
    except ImageError as exc:
        return ("bad", str(exc))
    except Exception as exc:  # noqa: BLE001 — whatever a file does, it must not stop the ingest
        return ("bad", f"cannot read image: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
    stored = mask_rel = mask_problem = ""
    store = _STATE["store"]
    if store is not None:
        stored = f"{STORE}/{digest[:2]}/{digest}{_EXT.get(info.format, Path(path).suffix.lower())}"
        _write_bytes_once(Path(store) / stored, data)
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
                _write_bytes_once(Path(store) / mask_rel, mdata)
    return ("ok", digest, arr, info.width, info.height, info.channels, info.resized, stored, mask_rel, mask_problem)


def _run(jobs: list[tuple[str, str]], size: int, channels: int, store: str | None, known: set[str],
         workers: int | None, progress: bool) -> list[tuple]:
    """``_process`` over ``jobs``, in order. In-process by default: one core reads ~1000-1800
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
                return list(tqdm(pool.map(_process, jobs, chunksize=chunk), **bar))
        except (BrokenProcessPool, OSError, RuntimeError) as exc:
            log.warning("worker pool failed (%s: %s); reading in-process instead", type(exc).__name__, exc)
    _init_worker(*init)
    return [_process(j) for j in tqdm(jobs, **bar)]


# ----------------------------------------------------------------------------- manifest and images
def load_manifest(out_dir: str | Path) -> pd.DataFrame:
    """The manifest under ``out_dir`` (an empty one with the right columns when there is none)."""
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return _empty(MANIFEST_COLUMNS)
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
    return _typed(df.sort_values("row"))


def load_images(out_dir: str | Path, mmap: bool = False) -> np.ndarray:
    """Packed images N×S×S×C uint8; row ``i`` is the manifest row with ``row == i``."""
    out_dir = Path(out_dir)
    path = out_dir / IMAGES
    if not path.exists():
        raise DataError(f"{path} does not exist; run the ingest first")
    images = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    n = len(load_manifest(out_dir))
    if len(images) < n:
        raise DataError(f"{path} holds {len(images)} images but the manifest lists {n}; run the ingest again")
    return images[:n]


def _write_images(path: Path, old: np.ndarray | None, new: np.ndarray) -> None:
    """images.npy = old rows then new rows, streamed into a temp file and renamed."""
    n_old = 0 if old is None else len(old)

    def write(tmp: Path) -> None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n_old + len(new), *new.shape[1:]))
        step = 4096
        for i in range(0, n_old, step):
            j = min(i + step, n_old)
            out[i:j] = old[i:j]
        out[n_old:] = new
        out.flush()
        del out

    _atomic_write(path, write)


def _existing_images(out_dir: Path, manifest: pd.DataFrame, size: int, channels: int) -> np.ndarray | None:
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


def _repack(out_dir: Path, manifest: pd.DataFrame, size: int, channels: int, workers: int | None,
            progress: bool) -> tuple[pd.DataFrame, np.ndarray]:
    """Decode every stored original again at ``size``/``channels`` (the store is the truth).

    A stored copy that is missing or damaged is restored from its source file when that
    still holds the same content; if any row can be restored from neither, nothing is
    changed and DataError says which — the manifest never loses a row.
    """
    jobs = [(str(out_dir / p), "") for p in manifest["stored_path"]]
    results = _run(jobs, size, channels, None, set(), workers, progress)
    arrays, lost = [], []
    for (_, row), res in zip(manifest.iterrows(), results):
        arr = res[2] if res[0] == "ok" else _restore_from_source(row, size, channels, out_dir)
        if arr is None:
            lost.append(f"{row['stored_path']} ({res[1]}; source {row['path']} gone or changed)")
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
    return _typed(table), images


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
    stored.unlink(missing_ok=True)  # a damaged copy: _write_bytes_once keeps what exists
    _write_bytes_once(stored, data)
    log.warning("stored copy %s was unusable; restored from %s", row["stored_path"], row["path"])
    return arr


# ----------------------------------------------------------------------------- ingest
def ingest(folders: Iterable[tuple[str, str | Path]], out_dir: str | Path, image_size: int, channels: int = 3,
           split: SplitShares | None = None, batch: str | None = None, progress: bool = False,
           workers: int | None = None) -> IngestResult:
    """Add the images of ``folders`` ((source name, folder) pairs) to the data set under ``out_dir``.

    A missing, non-folder or empty source folder is quarantined (reason "source folder does
    not exist", "source is not a folder", "no images in source folder") and the other sources
    are still ingested. Files under ``out_dir/store`` are never taken as new images.
    ``workers``: processes that read, hash and decode (default: in-process, which is the
    fastest below tens of thousands of images; see :func:`_run`).

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

    manifest = load_manifest(out_dir)
    quarantine: list[tuple[str, str]] = []
    old_images = _existing_images(out_dir, manifest, image_size, channels)
    rebuilt = False
    if old_images is None and len(manifest):
        log.warning("re-packing %d stored images at %dpx x %d channels", len(manifest), image_size, channels)
        manifest, repacked = _repack(out_dir, manifest, image_size, channels, workers, progress)
        _write_images(out_dir / IMAGES, None, repacked)
        old_images, rebuilt = np.load(out_dir / IMAGES, mmap_mode="r"), True

    # 1. list candidates per source
    store_real = os.path.realpath(out_dir / STORE) + os.sep
    jobs: list[tuple[str, str]] = []
    meta: list[tuple[str, str, str, str, str]] = []  # source, path, label, defect, info
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
            jobs.append((path, mask))
            meta.append((str(name), path, label, defect, info))

    # 2. read, hash, decode, store (in workers)
    known_path = dict(zip(manifest["id"], manifest["path"]))
    known_label = dict(zip(manifest["id"], manifest["label"] + "/" + manifest["defect"]))
    results = _run(jobs, image_size, channels, str(out_dir), set(known_path), workers, progress)

    # 3. decide, in listing order (so the outcome does not depend on worker timing)
    rows, arrays, dups, unchanged = [], [], [], 0
    for (source, path, label, defect, info), (_, mask), res in zip(meta, jobs, results):
        if res[0] == "bad":
            quarantine.append((path, res[1]))
            continue
        digest = res[1]
        if digest in known_path:
            if known_path[digest] == path:
                unchanged += 1
            else:
                theirs, ours = known_label[digest], f"{label}/{defect}"
                note = "" if theirs == ours else f"label differs: {ours.rstrip('/')} here, {theirs.rstrip('/')} stored"
                dups.append((path, digest, known_path[digest], note))
            continue
        _, _, arr, width, height, chans, resized, stored, mask_rel, mask_problem = res
        if mask_problem:
            quarantine.append((mask, f"{mask_problem}; image kept without a mask"))
        known_path[digest], known_label[digest] = path, f"{label}/{defect}"
        rows.append(dict(id=digest, path=path, source=source, label=label, defect=defect, width=width,
                         height=height, channels=chans, resized=resized, batch=batch, ingested_at=stamp,
                         row=len(manifest) + len(rows), stored_path=stored, mask_path=mask_rel, info=info))
        arrays.append(arr)

    # 4. assemble and write: images first, manifest last (rows are append-only)
    added = _empty(MANIFEST_COLUMNS)
    if rows:
        new_images = np.stack(arrays)
        added = pd.DataFrame(rows)
        added["brightness"] = brightness(new_images)
        added["split"] = split_of_many(added["id"], split)
        added = _typed(added)
        _write_images(out_dir / IMAGES, old_images, new_images)
        manifest = _typed(pd.concat([manifest, added], ignore_index=True)) if len(manifest) else added
    elif not (out_dir / IMAGES).exists():
        _write_images(out_dir / IMAGES, None, np.zeros((0, image_size, image_size, channels), np.uint8))
    if rows or rebuilt or not (out_dir / MANIFEST).exists():
        _atomic_write(out_dir / MANIFEST, lambda tmp: manifest.to_parquet(tmp, index=False))

    q = pd.DataFrame(quarantine, columns=["path", "reason"]).drop_duplicates(ignore_index=True)
    d = pd.DataFrame(dups, columns=["path", "id", "duplicate_of", "note"])
    for frame in (q, d):
        frame["batch"], frame["seen_at"] = batch, stamp
    q["file_mtime"] = [_mtime(p) for p in q["path"]]
    _append_csv(out_dir / QUARANTINE, q, QUARANTINE_COLUMNS, ["path", "reason"], refresh="file_mtime")
    _append_csv(out_dir / DUPLICATES, d, DUPLICATE_COLUMNS, ["path", "id"])
    for path, reason in q[["path", "reason"]].head(20).itertuples(index=False, name=None):
        log.info("quarantined %s: %s", path, reason)
    result = IngestResult(manifest, added, q[["path", "reason"]], d[["path", "id", "duplicate_of", "note"]],
                          unchanged, rebuilt, (_now() - start).total_seconds())
    log.info("ingest: %s", result.summary())
    return result


# ----------------------------------------------------------------------------- sources
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _generator_fingerprint() -> str:
    """Hash of the generator's code: a changed generator regenerates even with the same params."""
    from danvae.data import synthetic

    return hashlib.sha256(Path(synthetic.__file__).read_bytes()).hexdigest()[:16]


def materialize_sources(sources: Sequence[SyntheticSource | FolderSource], raw_dir: str | Path
                        ) -> list[tuple[str, Path]]:
    """Turn configured sources into (source name, folder) pairs for :func:`ingest`.

    A synthetic source is generated into ``raw_dir/<name>/`` with its parameters in
    ``raw_dir/<name>.params.json``; when that file matches (same params, same generator
    code) the folder is reused as is. Generation goes to a temp folder renamed into place,
    so an interrupted run never leaves a half-written folder that looks complete.
    A folder source is returned as is (its name defaults to the folder's name).
    """
    from danvae.data.synthetic import generate_surfaces

    raw_dir = Path(raw_dir)
    out: list[tuple[str, Path]] = []
    names: set[str] = set()
    for src in sources:
        if isinstance(src, FolderSource):
            name = src.name or Path(src.path).name or "folder"
            folder = Path(src.path)
        elif isinstance(src, SyntheticSource):
            name = src.name
            if not _NAME.fullmatch(name):
                raise DataError(f"synthetic source name {name!r} must be a plain folder name (letters, digits, . _ -)")
            folder = raw_dir / name
            params = {**src.model_dump(mode="json"), "generator": _generator_fingerprint()}
            params_file = raw_dir / f"{name}.params.json"
            try:
                current = json.loads(params_file.read_text()) if params_file.exists() else None
            except (OSError, ValueError):
                current = None
            if current != params or not (folder / "ground_truth.csv").is_file():
                if folder.exists() and current is None and not (folder / "ground_truth.csv").exists() \
                        and any(folder.iterdir()):
                    raise DataError(f"{folder} exists and was not written by the generator; move it or rename "
                                    f"the synthetic source (name: {name!r})")
                raw_dir.mkdir(parents=True, exist_ok=True)
                for stale in raw_dir.glob(f".{name}.tmp-*"):
                    shutil.rmtree(stale, ignore_errors=True)
                tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=raw_dir))
                log.info("generating synthetic source %s into %s", name, folder)
                generate_surfaces(tmp, n_normal=src.n_normal, n_anomaly=src.n_anomaly, size=src.size,
                                  dark_share=src.dark_share, seed=src.seed, difficulty=src.difficulty)
                params_file.unlink(missing_ok=True)
                if folder.exists():
                    shutil.rmtree(folder)
                os.replace(tmp, folder)
                _atomic_write(params_file, lambda p: p.write_text(json.dumps(params, indent=1, sort_keys=True)))
        else:
            raise DataError(f"unknown source type {type(src).__name__}")
        if name in names:
            raise DataError(f"two sources are named {name!r}; give each a distinct name")
        names.add(name)
        out.append((name, folder))
    return out
