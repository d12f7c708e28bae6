"""What validation reports: one :class:`CheckResult` per rule, the :class:`ValidationReport`, its
failure message and its JSON form."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import pandas as pd

from danvae.data.drift import DriftResult
from danvae.data.validation.gx_suite import MAX_EXAMPLES



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
            "details": jsonable(self.details),
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
            "counts": jsonable(self.counts),
            "checks": [c.to_dict() for c in self.checks],
            "drift": self.drift.to_dict() if self.drift is not None else None,
            "gx": jsonable(self.gx_statistics),
        }
        if not self.success:
            out["failure_message"] = self.failure_message()
        if include_gx_result:
            out["gx_result"] = jsonable(self.gx_result)  # to_json_dict() on GX's result object
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
        parts = [describe_failure(c) for c in failed]
        if drift_failed and self.drift is not None:
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



def format_value(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def describe_failure(check: CheckResult) -> str:
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
        bits.append(f"observed {format_value(observed)}")
    examples = d.get("examples") or []
    if examples:
        rendered = [
            ", ".join(f"{k}={format_value(v)}" for k, v in ex.items() if k != "index")
            for ex in examples[:MAX_EXAMPLES]
        ]
        bits.append("e.g. " + "; ".join(f"({r})" for r in rendered))
    if bits and not d.get("exception"):
        text += ": "
    elif bits:
        text += "; "
    return text + "; ".join(bits)


def jsonable(obj: Any) -> Any:
    """Plain Python types only: numpy scalars/arrays, NaN/NA, timestamps, enums, sets and tuples converted."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Enum):
        return jsonable(obj.value)
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, (pd.Timestamp, pd.Timedelta)) or hasattr(obj, "isoformat"):
        try:
            return obj.isoformat()
        except (TypeError, ValueError):
            return str(obj)
    if is_missing(obj):
        return None
    if hasattr(obj, "to_json_dict"):
        return jsonable(obj.to_json_dict())
    return str(obj)


def is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


