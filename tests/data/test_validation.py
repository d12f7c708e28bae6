"""The validate stage's library: the Great Expectations suite over the manifest, count rules, drift gate."""
from __future__ import annotations

import hashlib
import json
import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from danvae.config import DataConfig, ValidateConfig
from danvae.data.drift import DriftResult, brightness_drift
from danvae.data.validation import (
    CheckResult,
    ValidationFailed,
    ValidationReport,
    validate_manifest,
)

CFG = ValidateConfig()
OLD, NEW = "20261128T100000Z", "20261129T100000Z"


def _quantile_brightness(n: int, mean: float, sd: float = 0.08) -> np.ndarray:
    """Deterministic 'sample' of N(mean, sd): evenly spaced quantiles, so KS results do not depend on luck."""
    return np.clip(mean + sd * norm.ppf((np.arange(n) + 0.5) / n), 0.0, 1.0)


def make_manifest(n_old: int = 140, n_new: int = 60, new_mean: float = 0.7, old_mean: float = 0.7) -> pd.DataFrame:
    """A healthy manifest: splits 60/20/20 (by row), every 7th image a labelled anomaly, two batches."""
    n = n_old + n_new
    i = np.arange(n)
    ids = [hashlib.sha256(f"img-{k}".encode()).hexdigest() for k in i]
    label = np.where(i % 7 == 3, "anomaly", "normal")
    split = np.array(["train", "train", "train", "val", "test"])[i % 5]
    brightness = np.empty(n)
    # shuffle the quantiles within each batch so brightness does not follow row order
    rng = np.random.default_rng(0)
    brightness[:n_old] = rng.permutation(_quantile_brightness(n_old, old_mean))
    brightness[n_old:] = rng.permutation(_quantile_brightness(n_new, new_mean))
    return pd.DataFrame({
        "id": ids,
        "path": [f"surfaces/{lab}/img_{k:04d}.png" for k, lab in zip(i, label)],
        "source": "synthetic",
        "label": label,
        "defect": np.where(label == "anomaly", "scratch", ""),
        "brightness": brightness,
        "width": 64,
        "height": 64,
        "channels": 3,
        "resized": False,
        "split": split,
        "batch": np.where(i < n_old, OLD, NEW),
        "ingested_at": np.where(i < n_old, "2026-11-28T10:00:00+00:00", "2026-11-29T10:00:00+00:00"),
        "row": i,
        "stored_path": [f"data/images/{h[:2]}/{h}.png" for h in ids],
        "mask_path": "",
    })


@pytest.fixture(scope="module")
def good() -> pd.DataFrame:
    return make_manifest()


@pytest.fixture(scope="module")
def good_report(good) -> ValidationReport:
    return validate_manifest(good, CFG, image_size=64, data=DataConfig())


def _failed(report: ValidationReport, fragment: str) -> CheckResult:
    hits = [c for c in report.critical_failures if fragment in c.name]
    assert hits, f"no failed critical check named like {fragment!r}; failures: {[c.name for c in report.critical_failures]}"
    return hits[0]


# ---- a healthy manifest ------------------------------------------------------------------------


def test_good_manifest_passes(good_report):
    r = good_report
    assert r.success, r.failure_message()
    assert not r.critical_failures
    assert not r.warnings, [c.name for c in r.warnings]
    assert r.drift is not None and r.drift.status == "ok"
    assert r.drift.newest_batch == NEW
    assert r.drift.n_new == 60 - sum(1 for k in range(140, 200) if k % 7 == 3)
    assert r.gx_statistics["success"] is True
    assert r.gx_statistics["evaluated_expectations"] >= 40
    assert r.raise_for_failure() is r
    names = " ".join(c.name for c in r.checks)
    for expected in (
        "expect_table_columns_to_match_set",
        "expect_column_values_to_be_of_type(column='id', type_='str')",
        "expect_column_values_to_be_between(column='brightness', min_value=0.0, max_value=1.0)",
        "expect_column_values_to_be_unique(column='id')",
        "expect_column_values_to_be_unique(column='row')",
        "expect_column_values_to_be_in_set(column='label'",
        "expect_column_values_to_be_in_set(column='split'",
        "expect_column_values_to_be_in_set(column='channels'",
        "count: normal images per split",
        "count: labelled anomalies per split",
    ):
        assert expected in names
    assert "passed" in r.failure_message()


def test_pandas_dtype_variants_are_accepted(good):
    """object strings, nullable Int64, pyarrow strings, boolean: all sensible manifest dtypes pass."""
    df = good.copy()
    df["id"] = df["id"].astype(object)
    df["path"] = df["path"].astype("string[pyarrow]")
    df["label"] = df["label"].astype("string[python]")
    df["width"] = df["width"].astype("Int64")
    df["channels"] = df["channels"].astype("int32")
    df["resized"] = df["resized"].astype("boolean")
    df["brightness"] = df["brightness"].astype("float32")
    r = validate_manifest(df, CFG)
    assert r.success, r.failure_message()


def test_parquet_round_trip_passes(good, tmp_path):
    path = tmp_path / "manifest.parquet"
    good.to_parquet(path, index=False)
    r = validate_manifest(pd.read_parquet(path), CFG, image_size=64)
    assert r.success, r.failure_message()


# ---- broken manifests: each fails with the expectation named and example rows ---------------------------


def test_brightness_out_of_range_names_the_row(good):
    df = good.copy()
    df.loc[17, "brightness"] = 1.7
    df.index = df.index + 1000  # a non-default index must not confuse the example rows
    r = validate_manifest(df, CFG)
    assert not r.success
    check = _failed(r, "expect_column_values_to_be_between(column='brightness'")
    assert check.details["unexpected_count"] == 1
    assert check.details["examples"][0]["id"] == good.loc[17, "id"]
    msg = r.failure_message()
    assert "expect_column_values_to_be_between(column='brightness', min_value=0.0, max_value=1.0)" in msg
    assert good.loc[17, "id"] in msg and good.loc[17, "path"] in msg and "1.7" in msg
    with pytest.raises(ValidationFailed) as info:
        r.raise_for_failure()
    assert info.value.report is r
    assert good.loc[17, "id"] in str(info.value)


def test_null_label_fails(good):
    df = good.copy()
    df.loc[5, "label"] = None
    r = validate_manifest(df, CFG)
    assert not r.success
    check = _failed(r, "expect_column_values_to_not_be_null(column='label')")
    assert check.details["examples"] == [{"index": 5, "id": good.loc[5, "id"], "path": good.loc[5, "path"], "label": None}]
    msg = r.failure_message()
    assert "expect_column_values_to_not_be_null(column='label')" in msg and good.loc[5, "id"] in msg
    json.dumps(r.to_dict(include_gx_result=True), allow_nan=False)  # NaN became null


def test_duplicated_id_fails(good):
    df = good.copy()
    df.loc[9, "id"] = df.loc[8, "id"]
    r = validate_manifest(df, CFG)
    check = _failed(r, "expect_column_values_to_be_unique(column='id')")
    assert check.details["unexpected_count"] == 2
    assert {e["path"] for e in check.details["examples"]} == {good.loc[8, "path"], good.loc[9, "path"]}
    msg = r.failure_message()
    assert good.loc[8, "id"] in msg and good.loc[9, "path"] in msg
    assert not r.success


def test_unknown_split_fails(good):
    df = good.copy()
    df.loc[10, "split"] = "holdout"
    r = validate_manifest(df, CFG)
    assert not r.success
    check = _failed(r, "expect_column_values_to_be_in_set(column='split'")
    assert check.details["examples"][0]["split"] == "holdout"
    msg = r.failure_message()
    assert "'holdout'" in msg and good.loc[10, "id"] in msg


def test_too_few_normals_in_test_fails(good):
    df = good.copy()
    test_normals = df.index[(df["split"] == "test") & (df["label"] == "normal")]
    df.loc[test_normals[3:], "split"] = "train"  # keep three
    r = validate_manifest(df, CFG)
    assert not r.success
    check = _failed(r, "count: normal images per split >= 10")
    assert check.critical
    assert check.details["observed_value"]["test"] == 3
    assert check.details["examples"] == [{"split": "test", "normal": 3, "required": 10}]
    msg = r.failure_message()
    assert "normal images per split" in msg and "split='test'" in msg and "normal=3" in msg
    # the GX suite itself is fine: only the count rule failed
    assert [c.name for c in r.critical_failures] == [check.name]


def test_too_few_anomalies_in_val_fails(good):
    df = good.copy()
    df.loc[(df["split"] == "val") & (df["label"] == "anomaly"), "label"] = "unknown"
    r = validate_manifest(df, CFG)
    check = _failed(r, "count: labelled anomalies per split >= 1")
    assert check.details["observed_value"]["val"] == 0
    assert not r.success


@pytest.mark.parametrize("column", ["label", "brightness", "mask_path"])
def test_missing_column_fails_without_crashing(good, column):
    r = validate_manifest(good.drop(columns=[column]), CFG)
    assert not r.success
    check = _failed(r, "expect_table_columns_to_match_set")
    assert check.details["missing_columns"] == [column]
    assert f"missing column(s) '{column}'" in r.failure_message()
    # nothing in the suite raised: checks on the absent column are left out, not errors
    assert not any("exception" in c.details for c in r.checks)
    if column == "brightness":
        assert r.drift.status == "skipped" and "brightness" in r.drift.message
    if column == "label":
        count_checks = [c for c in r.critical_failures if c.name.startswith("count:")]
        assert count_checks and all("not_evaluated" in c.details for c in count_checks)
    json.dumps(r.to_dict(), allow_nan=False)


def test_wrong_dtypes_fail_with_observed_type(good):
    df = good.copy()
    df["width"] = df["width"].astype(float)
    df.loc[4, "width"] = np.nan
    df["brightness"] = df["brightness"].astype(str)
    r = validate_manifest(df, CFG)
    assert not r.success
    width = _failed(r, "expect_column_values_to_be_in_type_list(column='width'")
    assert width.details["observed_value"] == "float64"
    assert width.details["examples"][0]["id"] == good.loc[4, "id"]  # the null is why it is float
    _failed(r, "expect_column_values_to_be_in_type_list(column='brightness'")
    _failed(r, "expect_column_values_to_not_be_null(column='width')")


def test_row_numbers_must_be_0_to_n_minus_1(good):
    df = good.copy()
    df["row"] = df["row"] + 1
    r = validate_manifest(df, CFG)
    check = _failed(r, "expect_column_values_to_be_between(column='row'")
    assert check.details["examples"][0]["row"] == len(df)
    assert not r.success


def test_empty_manifest_fails_cleanly(good):
    r = validate_manifest(good.iloc[0:0], CFG)
    assert not r.success
    _failed(r, "expect_table_row_count_to_be_between")
    assert r.drift.status == "skipped"
    json.dumps(r.to_dict(), allow_nan=False)


# ---- warnings do not fail ------------------------------------------------------------------------------


def test_warnings_do_not_fail(good):
    df = good.copy()
    df.loc[0, "defect"] = "scratch"  # a normal image with a defect type
    df.loc[1, "width"] = 80  # wrong size but not marked as resized
    share = ValidateConfig(anomaly_share_max=0.1)  # 1 in 7 are anomalies
    r = validate_manifest(df, share, image_size=64)
    assert r.success, r.failure_message()
    warned = " ".join(c.name for c in r.warnings)
    assert "column='defect', where label == 'normal'" in warned
    assert "column='width', where resized == False" in warned
    assert "share of anomalies among labelled images <= 0.1" in warned
    assert all(not c.critical for c in r.warnings)
    assert r.to_dict()["n_warnings"] == len(r.warnings) == 3


def test_split_shares_warn_against_data_config(good_report, good):
    assert not any("split shares" in c.name for c in good_report.warnings)
    skewed = DataConfig(split={"train": 0.8, "val": 0.1, "test": 0.1})
    r = validate_manifest(good, CFG, data=skewed)
    assert r.success
    check = next(c for c in r.warnings if "split shares" in c.name)
    assert {e["split"] for e in check.details["examples"]} == {"train", "val", "test"}


# ---- the drift gate ---------------------------------------------------------------------------------


def test_drifted_newest_batch_fails():
    df = make_manifest(new_mean=0.2)
    r = validate_manifest(df, CFG)
    assert not r.critical_failures  # the table itself is fine
    assert r.drift.status == "fail" and r.drift.pvalue < CFG.drift_fail_pvalue
    assert r.drift.newest_batch == NEW and r.drift.n_reference == 140 - 20
    assert not r.success
    msg = r.failure_message()
    assert "KS p-value" in msg and NEW in msg
    with pytest.raises(ValidationFailed, match="KS p-value"):
        r.raise_for_failure()


def test_mildly_shifted_batch_warns_but_passes():
    df = make_manifest(new_mean=0.76)
    r = validate_manifest(df, CFG)
    assert r.drift.status == "warn", r.drift.message
    assert CFG.drift_fail_pvalue <= r.drift.pvalue < CFG.drift_warn_pvalue
    assert "KS p-value" in r.drift.message
    assert r.success, r.failure_message()


def test_single_batch_skips_drift(good):
    df = good.copy()
    df["batch"] = OLD
    r = validate_manifest(df, CFG)
    assert r.drift.status == "skipped" and "only one batch" in r.drift.message
    assert r.drift.statistic is None and r.drift.pvalue is None
    assert r.success


def test_small_newest_batch_skips_drift():
    df = make_manifest(n_old=190, n_new=10, new_mean=0.2)  # dark, but too few to judge
    d = brightness_drift(df, CFG)
    assert d.status == "skipped" and "drift_min_batch=20" in d.message
    assert d.n_new < CFG.drift_min_batch


def test_labelled_anomalies_are_not_drift():
    df = make_manifest(n_old=140, n_new=90)
    dark = df.index[df["batch"] == NEW][:50]
    df.loc[dark, "label"] = "anomaly"
    df.loc[dark, "brightness"] = 0.02  # a batch rich in very dark defects
    assert brightness_drift(df, CFG).status == "ok"
    df.loc[dark, "label"] = "unknown"  # the same images, unlabelled, do count
    assert brightness_drift(df, CFG).status == "fail"


def test_drift_levels_follow_config():
    df = make_manifest(new_mean=0.76)
    p = brightness_drift(df, CFG).pvalue
    strict = ValidateConfig(drift_warn_pvalue=0.5, drift_fail_pvalue=p * 10)
    lenient = ValidateConfig(drift_warn_pvalue=p / 10, drift_fail_pvalue=p / 100)
    assert brightness_drift(df, strict).status == "fail"
    assert brightness_drift(df, lenient).status == "ok"


def test_newest_batch_is_the_greatest_label():
    df = make_manifest()
    df.loc[df["batch"] == OLD, "batch"] = "20261201T000000Z"  # the old rows now sort last
    d = brightness_drift(df, CFG)
    assert d.newest_batch == "20261201T000000Z" and d.n_reference == 60 - 9


# ---- reporting ---------------------------------------------------------------------------------------


def test_to_dict_is_json_ready(good):
    df = good.copy()
    df.loc[3, "brightness"] = np.float64(1.5)
    df.loc[6, "label"] = None
    r = validate_manifest(df, CFG, image_size=64)
    d = r.to_dict(include_gx_result=True)
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    assert back["success"] is False
    assert back["n_rows"] == 200
    assert back["counts"]["by_split_label"]["test"]["normal"] > 0
    assert back["counts"]["by_batch"] == {OLD: 140, NEW: 60}
    assert back["gx"]["evaluated_expectations"] >= 40 and back["gx"]["great_expectations_version"]
    assert back["drift"]["status"] in {"ok", "warn"} and isinstance(back["drift"]["pvalue"], float)
    assert back["gx_result"]["statistics"]["unsuccessful_expectations"] >= 2
    assert "failure_message" in back and good.loc[3, "id"] in back["failure_message"]
    assert len(back["checks"]) == len(r.checks)
    assert all(isinstance(c["details"], dict) for c in back["checks"])
    assert isinstance(DriftResult(**{k: v for k, v in back["drift"].items()}), DriftResult)


def test_nothing_is_written(good, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = validate_manifest(good, CFG)
    assert r.success
    assert list(tmp_path.iterdir()) == []
    assert os.environ["GX_ANALYTICS_ENABLED"].lower() == "false"


def test_one_validation_is_fast(good, good_report):
    assert good_report.elapsed_s is not None
    r = validate_manifest(good, CFG, image_size=64)
    assert r.elapsed_s < 2.0  # ~0.4 s on 2 cores; GX import is not counted
