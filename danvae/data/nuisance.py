"""The nuisance factor ``y``: the image's brightness, or a per-image number read from a CSV.

Brightness (the default) is measured on the pixels. Anything else (an exposure time, a
lamp setting, a camera id as a number) comes from ``nuisance.csv`` at the top of a data
folder: a ``path`` column (relative to the folder, ``/``-separated) and one numeric column
per factor::

    path,exposure,camera
    normal/metal/0001.png,0.012,1
    anomaly/scratch/0007.png,0.004,2

Ingest keeps each image's numbers as JSON in the manifest's ``info`` column, so the factor
a model uses (``data.nuisance``) can change without ingesting again.

    info = read_nuisance_file("surfaces/")     # {absolute path: '{"exposure": 0.012, ...}'}, problems
    y = nuisance_values(table, "exposure")       # float64 per row; NuisanceError names what is missing
    det.score_table(images, nuisance=factor_values(table, det.nuisance))   # None for brightness
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

BRIGHTNESS = "brightness"
NUISANCE_FILE = "nuisance.csv"
INFO_COLUMN = "info"


class NuisanceError(ValueError):
    """The nuisance factor a model needs is not known for some images; the message says which."""


def read_nuisance_file(root: str | Path) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """``{absolute image path: JSON of its numbers}`` from ``root/nuisance.csv`` (empty when there
    is none), and the problems found as (path, reason): an unreadable file, no ``path`` column, a
    non-numeric value. A bad file is reported and ignored whole, never half-read."""
    path = Path(root) / NUISANCE_FILE
    if not path.is_file():
        return {}, []
    try:
        table = pd.read_csv(path, dtype={"path": str})
    except Exception as exc:  # noqa: BLE001 — any parse failure is the same answer: the file is not used
        return {}, [(str(path), f"unreadable nuisance file ({type(exc).__name__}: {exc}); not used")]
    factors = [c for c in table.columns if c != "path"]
    if "path" not in table.columns or not factors:
        return {}, [(str(path), "nuisance file needs a 'path' column and at least one numeric column; not used")]
    values = table[factors].apply(pd.to_numeric, errors="coerce")
    bad = [c for c in factors if (values[c].isna() & table[c].notna()).any() or np.isinf(values[c]).any()]
    if bad:
        return {}, [(str(path), f"nuisance columns {bad} hold values that are not finite numbers; not used")]
    base = Path(root)
    out = {}
    for rel, row in zip(table["path"], values.to_dict("records")):
        numbers = {k: float(v) for k, v in row.items() if not math.isnan(v)}
        out[str(base / rel)] = json.dumps(numbers, sort_keys=True)
    return out, []


def nuisance_values(table: pd.DataFrame, name: str) -> np.ndarray:
    """The factor ``name`` per row of ``table``: its ``brightness`` column, or ``name`` read from
    the ``info`` JSON. Raises NuisanceError naming how many rows lack it, with examples."""
    if name == BRIGHTNESS:
        return table[BRIGHTNESS].to_numpy(dtype=np.float64)
    infos = table[INFO_COLUMN] if INFO_COLUMN in table.columns else pd.Series([""] * len(table), dtype=str)
    values = np.array([json.loads(text).get(name, np.nan) if text else np.nan for text in infos], dtype=np.float64)
    missing = np.isnan(values)
    if missing.any():
        where = table["path"].to_numpy()[missing][:3] if "path" in table.columns else np.flatnonzero(missing)[:3]
        raise NuisanceError(f"nuisance '{name}' is unknown for {int(missing.sum())} of {len(values)} images "
                            f"(e.g. {', '.join(map(str, where))}): give it in {NUISANCE_FILE} beside the images, "
                            f"or set data.nuisance: {BRIGHTNESS}")
    return values


def factor_values(table: pd.DataFrame, name: str) -> np.ndarray | None:
    """:func:`nuisance_values` for a recorded factor; None for brightness (the detector measures it)."""
    return None if name == BRIGHTNESS else nuisance_values(table, name)
