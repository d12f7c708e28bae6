"""``validate_manifest``: the GX suite, the count rules and the drift gate in one report."""
from __future__ import annotations

import time

import pandas as pd

from danvae.config import DataConfig, ValidateConfig
from danvae.data.drift import brightness_drift
from danvae.data.validation.count_rules import count_checks, table_counts
from danvae.data.validation.gx_checks import CATEGORY_ORDER, check_from_gx
from danvae.data.validation.gx_suite import REQUIRED_COLUMNS, gx_runner
from danvae.data.validation.results import ValidationReport


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
    checks = [check_from_gx(res, df) for res in gx_result.results]
    checks.sort(key=lambda c: (not c.critical, CATEGORY_ORDER.get(str(c.details.get("category")), 99)))
    checks.extend(count_checks(df, cfg, data))
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
        counts=table_counts(df),
        gx_statistics=gx_stats,
        gx_result=gx_result,
        elapsed_s=time.perf_counter() - start,
    )
