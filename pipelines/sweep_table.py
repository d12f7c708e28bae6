"""The sweep's comparison table, from ``dvc exp show --json`` or from MLflow runs: one row per
(model, zx_dim, ratio), as CSV and markdown. Pure functions of their input; only pandas."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

MODELS = ("vae", "dpvae", "danvae")
NORMALS_ONLY = {"vae", "vae-global"}  # models that never see labelled anomalies

PARAMS_FILE = "params.yaml"
METRICS_FILE = "reports/metrics.json"

# (column, where it comes from in params.yaml or reports/metrics.json, markdown header)
COLUMNS: list[tuple[str, str, str]] = [
    ("model", "model.name", "model"),
    ("zx_dim", "model.zx_dim", "zx_dim"),
    ("ratio", "data.train_anomaly_ratio", "ratio"),
    ("auroc", "auroc", "AUROC"),
    ("auroc_darkest", "auroc_darkest", "AUROC darkest quintile"),
    ("brightness_spearman", "brightness_spearman_normal", "ρ(score, brightness) normals"),
    ("r2_zy", "r2_zy", "R²(z_y)"),
    ("r2_zx", "r2_zx", "R²(z_x)"),
]
TABLE_COLUMNS = [c for c, _, _ in COLUMNS] + ["experiment"]
METRIC_COLUMNS = ["auroc", "auroc_darkest", "brightness_spearman", "r2_zy", "r2_zx"]


def _lookup(tree: Mapping[str, Any] | None, dotted: str) -> Any:
    node: Any = tree or {}
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _file_data(files: Mapping[str, Any] | None, name: str) -> Mapping[str, Any] | None:
    """``{"reports/metrics.json": {"data": {...}}}`` → the data of that file (paths may use any separator)."""
    for path, entry in (files or {}).items():
        if Path(path).as_posix() == name and isinstance(entry, Mapping):
            return entry.get("data")
    return None


def rows_from_exp_show(show: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Flatten ``dvc exp show --json`` (DVC 3.x: a list of baseline commits, each with
    ``experiments``, each experiment with ``revs``) into one record per successful experiment:
    params and metrics as dotted keys plus ``experiment``, ``rev``, ``timestamp``.

    The workspace and the baseline commits themselves are left out; so are queued,
    running and failed experiments (their revs carry no data or an error).
    """
    rows = []
    for baseline in show:
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                if rev.get("error") or data.get("status", "Success") != "Success":
                    continue
                metrics = _file_data(data.get("metrics"), METRICS_FILE)
                params = _file_data(data.get("params"), PARAMS_FILE)
                if not metrics or not params:
                    continue
                row: dict[str, Any] = {"experiment": rev.get("name") or exp.get("name") or rev.get("rev"),
                                       "rev": rev.get("rev"), "timestamp": data.get("timestamp")}
                for column, source, _ in COLUMNS:
                    tree = params if source.startswith(("model.", "data.")) else metrics
                    row[source] = _lookup(tree, source)
                rows.append(row)
    return rows


def _number(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def gather_table(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (model, zx_dim, ratio), the newest experiment where one ran twice, sorted
    vae → dpvae → danvae, then zx_dim, then ratio. ``rows`` hold dotted params/metrics keys
    (as :func:`rows_from_exp_show` makes them) or the table's own column names."""
    records = []
    for row in rows:
        rec = {}
        for column, source, _ in COLUMNS:
            rec[column] = row.get(source, row.get(column))
        rec["experiment"] = row.get("experiment")
        rec["timestamp"] = row.get("timestamp") or ""
        records.append(rec)
    df = pd.DataFrame(records, columns=TABLE_COLUMNS + ["timestamp"])
    if df.empty:
        return df.drop(columns="timestamp")
    df["model"] = df["model"].astype(str)
    df["zx_dim"] = [int(_number(v)) if not math.isnan(_number(v)) else -1 for v in df["zx_dim"]]
    df["ratio"] = [_number(v) for v in df["ratio"]]
    for column in METRIC_COLUMNS:
        df[column] = [_number(v) for v in df[column]]
    df = df.sort_values("timestamp", kind="stable").drop_duplicates(["model", "zx_dim", "ratio"], keep="last")
    order = {m: i for i, m in enumerate(MODELS)}
    df["_order"] = [order.get(m, len(order)) for m in df["model"]]
    df = df.sort_values(["_order", "model", "zx_dim", "ratio"], kind="stable")
    return df.drop(columns=["_order", "timestamp"]).reset_index(drop=True)


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def to_markdown(df: pd.DataFrame, digits: int = 3, normals_only_note: bool = True) -> str:
    """A GitHub markdown table of :func:`gather_table`'s columns (no extra library needed).
    Models that never see labelled anomalies (``vae``) get their ratio marked with ``*``."""
    headers = [h for _, _, h in COLUMNS]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(headers) - 3)) + "|"]
    marked = False
    for _, row in df.iterrows():
        cells = []
        for column, _, _ in COLUMNS:
            value = row[column]
            if column == "ratio":
                text = _fmt(value, 2)
                if normals_only_note and row["model"] in NORMALS_ONLY:
                    text, marked = text + "*", True
            elif column == "zx_dim":
                text = str(int(value))
            else:
                text = _fmt(value, digits)
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    if marked:
        lines.append("")
        lines.append("\\* `vae` trains on normal images only: the labelled-anomaly ratio does not change it, "
                     "so it runs once per zx_dim (at the ratio shown).")
    return "\n".join(lines) + "\n"


def rows_from_mlflow(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows like :func:`rows_from_exp_show`'s from ``mlflow.search_runs`` (params ``model.name``,
    ``model.zx_dim``, ``data.train_anomaly_ratio``; the evaluate stage's metrics, logged with a
    ``test.`` prefix). Runs without a test AUROC (unfinished pipelines) are left out."""
    def column(name: str) -> str | None:
        for candidate in (f"metrics.test.{name}", f"metrics.test..{name}"):
            if candidate in runs.columns:
                return candidate
        return None

    rows = []
    for _, run in runs.iterrows():
        row: dict[str, Any] = {"experiment": run.get("tags.mlflow.runName") or run.get("run_id"),
                               "rev": run.get("run_id"), "timestamp": str(run.get("start_time") or "")}
        for _, source, _ in COLUMNS:
            if source.startswith(("model.", "data.")):
                row[source] = run.get(f"params.{source}")
            else:
                col = column(source)
                value = run.get(col) if col else None
                row[source] = None if value is None or (isinstance(value, float) and math.isnan(value)) else value
        if row["auroc"] is not None and row["model.name"] is not None:
            rows.append(row)
    return rows
