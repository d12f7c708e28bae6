"""Configured sources as folders to ingest: a synthetic source is generated (once per
parameters and generator code), a folder source is taken as it is.

    found = materialize_sources(cfg.data.sources, Path("data/raw"))   # [(name, folder)]
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from danvae.config import FolderSource, SyntheticSource
from danvae.data.folders import DataError
from danvae.files import atomic_write

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _generator_fingerprint() -> str:
    """Hash of the generator's code: a changed generator regenerates even with the same params."""
    from danvae.data import synthetic

    digest = hashlib.sha256()
    for path in sorted(Path(synthetic.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


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
                atomic_write(params_file, lambda p: p.write_text(json.dumps(params, indent=1, sort_keys=True)))
        else:
            raise DataError(f"unknown source type {type(src).__name__}")
        if name in names:
            raise DataError(f"two sources are named {name!r}; give each a distinct name")
        names.add(name)
        out.append((name, folder))
    return out
