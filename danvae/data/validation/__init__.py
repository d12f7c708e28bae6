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
from danvae.data.manifest import LABELS, SPLITS
from danvae.data.validation.gx_suite import CHANNELS, REQUIRED_COLUMNS
from danvae.data.validation.results import CheckResult, ValidationFailed, ValidationReport
from danvae.data.validation.validate import validate_manifest

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
