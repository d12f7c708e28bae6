"""Great Expectations results turned into :class:`CheckResult` entries with example rows."""
from __future__ import annotations

from enum import Enum
from typing import Any

import numpy as np
import pandas as pd

from danvae.data.validation.gx_suite import BOOL_TYPES, INT_TYPES, MAX_EXAMPLES
from danvae.data.validation.results import CheckResult, is_missing, jsonable

CATEGORY_ORDER = {
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


def check_from_gx(res: Any, df: pd.DataFrame) -> CheckResult:
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
        rows.append(jsonable(entry))
    return rows


def _fallback_examples(df: pd.DataFrame, exp_type: str, kwargs: dict) -> list[dict]:
    """Example rows, computed in pandas, for aggregate expectations GX gives no rows for (dtype checks)."""
    column = kwargs["column"]
    s = df[column]
    if exp_type == "expect_column_values_to_be_of_type":
        bad = s.map(lambda v: not isinstance(v, str) and not is_missing(v)) | s.isna()
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
