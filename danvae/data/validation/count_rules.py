"""The count rules GX expresses poorly, in pandas: normals and anomalies per split, the anomaly
share, the split shares; and the counts table of the report."""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from danvae.config import DataConfig, ValidateConfig
from danvae.data.manifest import LABELS, SPLITS
from danvae.data.validation.results import CheckResult


def _label_split_table(df: pd.DataFrame) -> pd.DataFrame:
    table = pd.crosstab(df["split"].astype(object), df["label"].astype(object))
    return table.reindex(index=list(SPLITS), columns=list(LABELS), fill_value=0).fillna(0).astype(int)


def _not_evaluated(name: str, critical: bool, needed: tuple[str, ...], df: pd.DataFrame) -> CheckResult | None:
    missing = [c for c in needed if c not in df.columns]
    if not missing:
        return None
    return CheckResult(name, False, critical, {
        "category": "counts", "not_evaluated": f"needs column(s) {', '.join(missing)}",
    })


def count_checks(df: pd.DataFrame, cfg: ValidateConfig, data: DataConfig | None) -> list[CheckResult]:
    checks: list[CheckResult] = []
    needed = ("label", "split")

    name = f"count: normal images per split >= {cfg.min_per_split} (min_per_split)"
    checks.append(_not_evaluated(name, True, needed, df) or _min_count(df, name, "normal", cfg.min_per_split))
    name = f"count: labelled anomalies per split >= {cfg.min_anomalies} (min_anomalies)"
    checks.append(_not_evaluated(name, True, needed, df) or _min_count(df, name, "anomaly", cfg.min_anomalies))
    name = f"count: share of anomalies among labelled images <= {cfg.anomaly_share_max:g} (anomaly_share_max)"
    checks.append(_not_evaluated(name, False, needed, df) or _anomaly_share(df, name, cfg.anomaly_share_max))
    if data is not None:
        name = "count: split shares near data.split"
        checks.append(_not_evaluated(name, False, ("split",), df) or _split_shares(df, name, data))
    return checks


def _min_count(df: pd.DataFrame, name: str, label: str, minimum: int) -> CheckResult:
    table = _label_split_table(df)
    observed = {split: int(table.loc[split, label]) for split in SPLITS}
    short = [{"split": s, label: n, "required": minimum} for s, n in observed.items() if n < minimum]
    return CheckResult(name, not short, True, {
        "category": "counts", "observed_value": observed, "required": minimum, "examples": short,
    })


def _anomaly_share(df: pd.DataFrame, name: str, share_max: float) -> CheckResult:
    table = _label_split_table(df)

    def share(normal: int, anomaly: int) -> float | None:
        return None if normal + anomaly == 0 else anomaly / (normal + anomaly)

    observed = {"all": share(int(table["normal"].sum()), int(table["anomaly"].sum()))}
    for split in SPLITS:
        observed[split] = share(int(table.loc[split, "normal"]), int(table.loc[split, "anomaly"]))
    over = [
        {"split": k, "anomaly_share": round(v, 4), "max": share_max}
        for k, v in observed.items() if v is not None and v > share_max
    ]
    return CheckResult(name, not over, False, {
        "category": "counts", "observed_value": observed, "max": share_max, "examples": over,
    })


def _split_shares(df: pd.DataFrame, name: str, data: DataConfig) -> CheckResult:
    counts = df["split"].astype(object).value_counts()
    n = int(counts.reindex(list(SPLITS), fill_value=0).sum())
    expected = {s: float(getattr(data.split, s)) for s in SPLITS}
    observed: dict[str, float | None] = {}
    off = []
    for split, p in expected.items():
        if n == 0:
            observed[split] = None
            continue
        obs = int(counts.get(split, 0)) / n
        observed[split] = obs
        tolerance = max(0.05, 4.0 * math.sqrt(p * (1 - p) / n))  # hash splits: binomial noise
        if abs(obs - p) > tolerance:
            off.append({"split": split, "observed_share": round(obs, 4), "expected_share": p,
                        "tolerance": round(tolerance, 4)})
    return CheckResult(name, not off and n > 0, False, {
        "category": "counts", "observed_value": observed, "expected": expected, "examples": off,
    })


def table_counts(df: pd.DataFrame) -> dict:
    out: dict[str, Any] = {"rows": len(df)}
    if "split" in df.columns and "label" in df.columns:
        table = pd.crosstab(df["split"].astype(object).fillna("<null>"), df["label"].astype(object).fillna("<null>"))
        out["by_split_label"] = {
            str(s): {str(lab): int(v) for lab, v in row.items() if v} for s, row in table.iterrows()
        }
    for col in ("label", "split", "source", "batch"):
        if col in df.columns:
            vc = df[col].astype(object).fillna("<null>").value_counts()
            if col == "batch":
                vc = vc.sort_index()
            out[f"by_{col}"] = {str(k): int(v) for k, v in vc.items()}
    return out


# ---- messages and JSON ----------------------------------------------------------------------------
