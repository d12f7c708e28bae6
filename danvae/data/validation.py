"""Validation of the ingest manifest: a Great Expectations 1.x suite, count rules, and the drift gate.

``validate_manifest(df, cfg)`` runs

* a GX suite (ephemeral context, pandas data source, whole-dataframe batch definition, one
  :class:`~great_expectations.ValidationDefinition` run with ``batch_parameters={"dataframe": df}``)
  over schema, column types, nulls, value ranges, uniqueness, label/split sets and formats;
* count rules that GX expresses poorly, done in pandas: normal images per split, labelled
  anomalies per split, the share of anomalies among labelled images (and, given a
  :class:`~danvae.config.DataConfig`, the observed split shares);
* the brightness drift gate (:func:`danvae.data.drift.brightness_drift`).

Every rule comes back as a :class:`CheckResult` (critical or warning, with example rows); the
report fails when a critical check fails or the drift gate says ``"fail"``.

Great Expectations is imported on first use (about 3-6 s); the context lives in memory only
(ephemeral: nothing is written to disk) and is built once per process.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import pandas as pd

from danvae.config import DataConfig, ValidateConfig
from danvae.data.drift import DriftResult, brightness_drift
from danvae.data.gx_suite import BOOL_TYPES, CHANNELS, INT_TYPES, MAX_EXAMPLES, REQUIRED_COLUMNS, gx_runner
from danvae.data.manifest import LABELS, SPLITS

__all__ = [
    "CheckResult",
    "ValidationReport",
    "ValidationFailed",
    "validate_manifest",
    "REQUIRED_COLUMNS",
    "LABELS",
    "SPLITS",
    "CHANNELS",
]



# ---- results ------------------------------------------------------------------------


@dataclass
class CheckResult:
    """One rule's outcome. ``details`` holds observed values and up to 5 example rows."""

    name: str
    success: bool
    critical: bool
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "success": bool(self.success),
            "critical": bool(self.critical),
            "details": _jsonable(self.details),
        }


@dataclass
class ValidationReport:
    success: bool  # no critical check failed and the drift gate did not fail
    checks: list[CheckResult]
    drift: DriftResult | None
    n_rows: int = 0
    counts: dict = field(default_factory=dict)
    gx_statistics: dict = field(default_factory=dict)
    gx_result: Any = field(default=None, repr=False)  # GX's ExpectationSuiteValidationResult (SUMMARY format)
    elapsed_s: float | None = None

    @property
    def critical_failures(self) -> list[CheckResult]:
        return [c for c in self.checks if c.critical and not c.success]

    @property
    def warnings(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.critical and not c.success]

    def to_dict(self, include_gx_result: bool = False) -> dict:
        """JSON-ready summary (``json.dumps`` works): counts, each check, drift, GX statistics."""
        out = {
            "success": bool(self.success),
            "n_rows": int(self.n_rows),
            "n_checks": len(self.checks),
            "n_critical_failures": len(self.critical_failures),
            "n_warnings": len(self.warnings),
            "drift_status": self.drift.status if self.drift is not None else None,
            "elapsed_s": None if self.elapsed_s is None else round(float(self.elapsed_s), 4),
            "counts": _jsonable(self.counts),
            "checks": [c.to_dict() for c in self.checks],
            "drift": self.drift.to_dict() if self.drift is not None else None,
            "gx": _jsonable(self.gx_statistics),
        }
        if not self.success:
            out["failure_message"] = self.failure_message()
        if include_gx_result:
            out["gx_result"] = _jsonable(self.gx_result)  # to_json_dict() on GX's result object
        return out

    def failure_message(self) -> str:
        """One paragraph naming each failed critical check and example rows (id, path, value)."""
        failed = self.critical_failures
        drift_failed = self.drift is not None and self.drift.status == "fail"
        if not failed and not drift_failed:
            return (
                f"manifest validation passed: {len(self.checks)} checks on {self.n_rows} rows, "
                f"{len(self.warnings)} warning(s)"
                + (f"; {self.drift.message}" if self.drift is not None else "")
            )
        parts = [_describe_failure(c) for c in failed]
        if drift_failed:
            parts.append(self.drift.message)
        n = len(parts)
        head = (
            f"manifest validation failed ({n} critical failure{'s' if n != 1 else ''} "
            f"on {self.n_rows} rows): "
        )
        return head + " | ".join(f"[{i}] {p}" for i, p in enumerate(parts, 1))

    def raise_for_failure(self) -> "ValidationReport":
        """Raise :class:`ValidationFailed` unless the report succeeded; returns self otherwise."""
        if not self.success:
            raise ValidationFailed(self)
        return self


class ValidationFailed(Exception):
    """A critical expectation failed, or the brightness drift gate failed."""

    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__(report.failure_message())


# ---- public entry point -------------------------------------------------------------------------


def validate_manifest(
    manifest: pd.DataFrame,
    cfg: ValidateConfig,
    image_size: int | None = None,
    *,
    data: DataConfig | None = None,
) -> ValidationReport:
    """Validate the ingest manifest: GX suite, count rules and brightness drift.

    ``image_size`` (or ``data.image_size``) enables the warning that rows not marked ``resized``
    have that width and height. ``data`` also enables the split-share warning.
    """
    if not isinstance(manifest, pd.DataFrame):
        raise TypeError(f"manifest must be a pandas DataFrame, got {type(manifest).__name__}")
    if image_size is None and data is not None:
        image_size = data.image_size
    start = time.perf_counter()
    df = manifest.reset_index(drop=True)
    present = tuple(c for c in REQUIRED_COLUMNS if c in df.columns)

    gx_result = gx_runner().run(df, present, image_size)
    checks = [_check_from_gx(res, df) for res in gx_result.results]
    checks.sort(key=lambda c: (not c.critical, _CATEGORY_ORDER.get(c.details.get("category"), 99)))
    checks.extend(_count_checks(df, cfg, data))
    drift = brightness_drift(df, cfg)

    success = not any(c.critical and not c.success for c in checks) and drift.status != "fail"
    gx_stats = dict(gx_result.statistics)
    gx_stats["success"] = bool(gx_result.success)
    gx_stats["great_expectations_version"] = (gx_result.meta or {}).get("great_expectations_version")
    gx_stats["suite_name"] = gx_result.suite_name
    return ValidationReport(
        success=success,
        checks=checks,
        drift=drift,
        n_rows=len(df),
        counts=_counts(df),
        gx_statistics=gx_stats,
        gx_result=gx_result,
        elapsed_s=time.perf_counter() - start,
    )


# ---- GX result -> CheckResult ---------------------------------------------------------------------

_CATEGORY_ORDER = {
    "schema": 0, "counts": 1, "types": 2, "nulls": 3, "ranges": 4, "sets": 5, "uniqueness": 6,
    "format": 7, "consistency": 8,
}
_RESULT_KEYS = (
    "observed_value", "element_count", "unexpected_count", "unexpected_percent", "missing_count",
)


def _render_condition(cond: Any) -> str:
    if isinstance(cond, dict) and "operator" in cond:
        col = cond.get("column")
        col = col.get("name") if isinstance(col, dict) else col
        return f"{col} {cond['operator']} {cond.get('parameter')!r}"
    return str(cond)


def _expectation_name(exp_type: str, kwargs: dict) -> str:
    parts = []
    for key, value in kwargs.items():
        if key == "row_condition":
            parts.append(f"where {_render_condition(value)}")
        elif isinstance(value, (list, tuple)) and len(value) > 6:
            shown = ", ".join(map(repr, value[:3]))
            parts.append(f"{key}=[{shown}, ... ({len(value)} items)]")
        else:
            parts.append(f"{key}={value!r}")
    return f"{exp_type}({', '.join(parts)})"


def _severity_is_critical(severity: Any) -> bool:
    value = severity.value if isinstance(severity, Enum) else severity
    return str(value).lower() == "critical"


def _check_from_gx(res: Any, df: pd.DataFrame) -> CheckResult:
    config = res.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "result_format", "catch_exceptions")}
    column = kwargs.get("column")
    result = res.result or {}
    details: dict[str, Any] = {
        "expectation_type": config.type,
        "kwargs": kwargs,
        "severity": str(config.severity.value if isinstance(config.severity, Enum) else config.severity),
        "category": (config.meta or {}).get("category"),
    }
    for key in _RESULT_KEYS:
        if key in result:
            details[key] = result[key]
    if result.get("partial_unexpected_counts"):
        details["unexpected_values"] = result["partial_unexpected_counts"][:MAX_EXAMPLES]
    info = res.exception_info or {}
    if "raised_exception" in info:
        raised = bool(info.get("raised_exception"))
        message = info.get("exception_message")
    else:  # {metric id: {...}} when a metric could not be computed
        errors = [v for v in info.values() if isinstance(v, dict) and v.get("raised_exception")]
        raised = bool(errors)
        message = errors[0].get("exception_message") if errors else None
    if raised:
        details["exception"] = message

    success = bool(res.success)
    if config.type == "expect_table_columns_to_match_set":
        details["missing_columns"] = [c for c in kwargs.get("column_set", []) if c not in df.columns]
        details["observed_value"] = [str(c) for c in df.columns]
    if not success:
        index = result.get("partial_unexpected_index_list")
        if index:
            details["examples"] = _example_rows(df, index[:MAX_EXAMPLES], column)
        elif column in df.columns and not raised:
            details["examples"] = _fallback_examples(df, config.type, kwargs)
    return CheckResult(_expectation_name(config.type, kwargs), success, _severity_is_critical(config.severity), details)


def _example_rows(df: pd.DataFrame, index: list, column: str | None) -> list[dict]:
    rows = []
    for item in index:
        idx = item.get("index", item) if isinstance(item, dict) else item
        try:
            row = df.loc[idx]
        except (KeyError, TypeError):
            continue
        entry: dict[str, Any] = {"index": idx}
        for key in ("id", "path"):
            if key in df.columns:
                entry[key] = row[key]
        if column is not None and column in df.columns and column not in entry:
            entry[column] = row[column]
        rows.append(_jsonable(entry))
    return rows


def _fallback_examples(df: pd.DataFrame, exp_type: str, kwargs: dict) -> list[dict]:
    """Example rows, computed in pandas, for aggregate expectations GX gives no rows for (dtype checks)."""
    column = kwargs["column"]
    s = df[column]
    if exp_type == "expect_column_values_to_be_of_type":
        bad = s.map(lambda v: not isinstance(v, str) and not _is_missing(v)) | s.isna()
    elif exp_type == "expect_column_values_to_be_in_type_list":
        type_list = kwargs.get("type_list") or []
        if type_list == BOOL_TYPES:
            bad = ~s.map(lambda v: isinstance(v, (bool, np.bool_)))
        elif type_list == INT_TYPES:
            bad = ~s.map(lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)))
            as_num = pd.to_numeric(s, errors="coerce")
            worst = as_num.isna() | (as_num.round() != as_num)
            if worst.any():  # nulls and non-integers first: they are why the dtype is not an int
                bad = worst
        else:
            bad = pd.to_numeric(s, errors="coerce").isna()
    else:
        return []
    bad = pd.Series(bad, index=s.index).fillna(True).astype(bool)
    index = list(s.index[bad][:MAX_EXAMPLES]) or list(s.index[:MAX_EXAMPLES])
    return _example_rows(df, index, column)


def _is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


# ---- count rules (pandas) -----------------------------------------------------------------------


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


def _count_checks(df: pd.DataFrame, cfg: ValidateConfig, data: DataConfig | None) -> list[CheckResult]:
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


def _counts(df: pd.DataFrame) -> dict:
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


def _format_value(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _describe_failure(check: CheckResult) -> str:
    d = check.details
    text = f"{check.name} failed"
    if d.get("missing_columns"):
        return text + f": missing column(s) {', '.join(map(repr, d['missing_columns']))}"
    if d.get("not_evaluated"):
        return text + f": not evaluated, {d['not_evaluated']}"
    if d.get("exception"):
        text += f": could not be evaluated ({d['exception']})"
    bits = []
    if d.get("unexpected_count"):
        bits.append(f"{d['unexpected_count']} of {d.get('element_count', '?')} rows unexpected")
    observed = d.get("observed_value")
    if observed is not None and d.get("category") != "counts":
        bits.append(f"observed {_format_value(observed)}")
    examples = d.get("examples") or []
    if examples:
        rendered = [
            ", ".join(f"{k}={_format_value(v)}" for k, v in ex.items() if k != "index")
            for ex in examples[:MAX_EXAMPLES]
        ]
        bits.append("e.g. " + "; ".join(f"({r})" for r in rendered))
    if bits and not d.get("exception"):
        text += ": "
    elif bits:
        text += "; "
    return text + "; ".join(bits)


def _jsonable(obj: Any) -> Any:
    """Plain Python types only: numpy scalars/arrays, NaN/NA, timestamps, enums, sets and tuples converted."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Enum):
        return _jsonable(obj.value)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, (pd.Timestamp, pd.Timedelta)) or hasattr(obj, "isoformat"):
        try:
            return obj.isoformat()
        except (TypeError, ValueError):
            return str(obj)
    if _is_missing(obj):
        return None
    if hasattr(obj, "to_json_dict"):
        return _jsonable(obj.to_json_dict())
    return str(obj)
