"""New surface images waiting in ``data/incoming/``: content not yet in the manifest."""
from __future__ import annotations

import hashlib
import os
import stat
from datetime import datetime
from pathlib import Path

from pipelines.paths import DATA


def _resolved(path: Path) -> str:
    """The absolute, symlink-free path, or the path as given where it cannot be resolved (a loop)."""
    try:
        return str(path.resolve())
    except (OSError, RuntimeError):
        return str(path)


def find_new_images(project_dir: str | Path, incoming: str | Path = "data/incoming") -> list[str]:
    """Image files under ``incoming`` (relative to the project) whose sha256 is not in the manifest.

    Files an earlier ingest refused (``data/quarantine.csv``: when, and the file's mtime then)
    and not modified since it last refused them are not new."""
    import pandas as pd

    from danvae.data.folders import scan
    from danvae.data.manifest import QUARANTINE, load_manifest

    root = Path(project_dir)
    folder = root / incoming
    if not folder.is_dir():
        return []
    known = set(load_manifest(root / DATA)["id"])
    refused: dict[str, float] = {}
    qpath = root / DATA / QUARANTINE
    if qpath.exists():
        try:
            q = pd.read_csv(qpath, dtype=str, keep_default_na=False)
            last = q["file_mtime"] if "file_mtime" in q else q.get("seen_at", [])
            for path, seen, latest in zip(q.get("path", []), q.get("seen_at", []), last, strict=False):
                try:
                    when = max(datetime.fromisoformat(t).timestamp() for t in (seen, latest or seen))
                except ValueError:
                    continue
                for key in (path, _resolved(root / path)):
                    refused[key] = max(refused.get(key, 0.0), when)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError):
            pass
    new = []
    for path in scan(folder).found["path"]:
        p = Path(path)
        rel = os.path.relpath(p, root)
        try:
            st = p.stat()
            if not stat.S_ISREG(st.st_mode):  # a FIFO named like an image would block the read forever
                continue
            if max(refused.get(rel, 0.0), refused.get(_resolved(p), 0.0)) >= st.st_mtime - 1e-6:  # file_mtime: µs
                continue
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
        except OSError:
            continue
        if digest not in known:
            new.append(rel)
    return sorted(new)
