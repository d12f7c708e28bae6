"""The drift gate: brightness of the newest ingest batch against everything before it.

A two-sample Kolmogorov-Smirnov test on the brightness of normal and unlabelled images
(labelled anomalies are left out, so that a batch rich in defects does not read as drift).
Levels come from :class:`danvae.config.ValidateConfig`: a p-value under
``drift_fail_pvalue`` fails, under ``drift_warn_pvalue`` warns.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pandas as pd

from danvae.config import ValidateConfig

DriftStatus = Literal["ok", "warn", "fail", "skipped"]


@dataclass
class DriftResult:
    status: DriftStatus
    statistic: float | None
    pvalue: float | None
    newest_batch: str | None
    n_new: int
    n_reference: int
    message: str
    reference_batches: int = 0
    new_mean: float | None = None
    reference_mean: float | None = None

    def to_dict(self) -> dict:
        """JSON-ready (plain Python types only)."""
        out = asdict(self)
        for key in ("statistic", "pvalue", "new_mean", "reference_mean"):
            value = out[key]
            if value is not None:
                value = float(value)
                out[key] = value if np.isfinite(value) else None
        for key in ("n_new", "n_reference", "reference_batches"):
            out[key] = int(out[key])
        return out


def _skipped(message: str, newest: str | None = None, n_new: int = 0, n_ref: int = 0, n_ref_batches: int = 0) -> DriftResult:
    return DriftResult("skipped", None, None, newest, int(n_new), int(n_ref), message, int(n_ref_batches))


def brightness_drift(manifest: pd.DataFrame, cfg: ValidateConfig) -> DriftResult:
    """Compare the brightness of the newest batch with all earlier batches (two-sample KS).

    The newest batch is the rows whose ``batch`` equals the greatest batch label (labels sort:
    UTC timestamps like ``20261129T135001Z`` or user labels). Rows without a batch label or a
    brightness are ignored. Fewer than ``cfg.drift_min_batch`` images on either side, or a single
    batch, is reported as ``"skipped"`` with the reason, not judged.
    """
    missing = [c for c in ("batch", "brightness") if c not in manifest.columns]
    if missing:
        return _skipped(f"brightness drift not judged: the manifest lacks column(s) {', '.join(missing)}")

    batch = manifest["batch"]
    known = batch.notna()
    if not known.any():
        return _skipped("brightness drift not judged: no row has a batch label")
    batch_str = batch.astype(str)
    batches = sorted(batch_str[known].unique())
    newest = batches[-1]
    if len(batches) < 2:
        return _skipped(
            f"brightness drift not judged: only one batch ({newest!r}), so there is no reference to compare against",
            newest,
        )

    brightness = pd.to_numeric(manifest["brightness"], errors="coerce")
    usable = known & brightness.notna() & np.isfinite(brightness.astype(float))
    if "label" in manifest.columns:
        usable &= manifest["label"].astype(object).ne("anomaly")
    is_new = usable & (batch_str == newest)
    is_ref = usable & (batch_str != newest)
    new = brightness[is_new].to_numpy(dtype=float)
    ref = brightness[is_ref].to_numpy(dtype=float)
    n_ref_batches = len(batches) - 1

    if len(new) < cfg.drift_min_batch:
        return _skipped(
            f"brightness drift not judged: newest batch {newest!r} has {len(new)} normal/unlabelled image(s) "
            f"with a brightness, fewer than drift_min_batch={cfg.drift_min_batch}",
            newest, len(new), len(ref), n_ref_batches,
        )
    if len(ref) < cfg.drift_min_batch:
        return _skipped(
            f"brightness drift not judged: the reference ({n_ref_batches} earlier batch(es)) has {len(ref)} "
            f"normal/unlabelled image(s) with a brightness, fewer than drift_min_batch={cfg.drift_min_batch}",
            newest, len(new), len(ref), n_ref_batches,
        )

    from scipy.stats import ks_2samp

    test = ks_2samp(new, ref)
    statistic, pvalue = float(test.statistic), float(test.pvalue)
    new_mean, ref_mean = float(new.mean()), float(ref.mean())
    what = (
        f"brightness of newest batch {newest!r} (n={len(new)}, mean {new_mean:.3f}) vs reference "
        f"({n_ref_batches} earlier batch(es), n={len(ref)}, mean {ref_mean:.3f}): "
        f"KS statistic D={statistic:.3f}, KS p-value={pvalue:.3g}"
    )
    if pvalue < cfg.drift_fail_pvalue:
        status: DriftStatus = "fail"
        message = f"brightness drift FAILED: {what} < fail level {cfg.drift_fail_pvalue:g}"
    elif pvalue < cfg.drift_warn_pvalue:
        status = "warn"
        message = (
            f"brightness drift warning: {what} < warn level {cfg.drift_warn_pvalue:g} "
            f"(fail level {cfg.drift_fail_pvalue:g})"
        )
    else:
        status = "ok"
        message = f"no brightness drift: {what} >= warn level {cfg.drift_warn_pvalue:g}"
    return DriftResult(status, statistic, pvalue, newest, len(new), len(ref), message, n_ref_batches, new_mean, ref_mean)
