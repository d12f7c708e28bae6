"""Which manifest rows train, calibrate and test a detector.

The split of every image is fixed by its content hash; within it, the labelled
anomalies used for training and the anomalies in the test set are taken in id order,
so adding images never reshuffles earlier choices more than the new counts demand.

    train, val, test = select(manifest, train_anomaly_ratio=0.10, test_anomaly_share=0.30)
"""
from __future__ import annotations

import pandas as pd


def _first(rows: pd.DataFrame, n: int) -> pd.DataFrame:
    return rows.sort_values("id").head(max(0, n))


def training_rows(manifest: pd.DataFrame, anomaly_ratio: float) -> pd.DataFrame:
    """Train-split normals plus labelled anomalies numbering ``anomaly_ratio`` × the normals."""
    train = manifest[manifest["split"] == "train"]
    normals = train[train["label"] == "normal"]
    anomalies = _first(train[train["label"] == "anomaly"], round(anomaly_ratio * len(normals)))
    return pd.concat([normals, anomalies]).sort_values("row")


def validation_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """Every labelled validation image: the threshold and score kind are chosen here."""
    val = manifest[(manifest["split"] == "val") & manifest["label"].isin(["normal", "anomaly"])]
    return val.sort_values("row")


def test_rows(manifest: pd.DataFrame, anomaly_share: float) -> pd.DataFrame:
    """Test-split images with anomalies making up ``anomaly_share`` (fewer normals if anomalies run short)."""
    test = manifest[manifest["split"] == "test"]
    normals, anomalies = test[test["label"] == "normal"], test[test["label"] == "anomaly"]
    want = round(anomaly_share / (1 - anomaly_share) * len(normals))
    if want <= len(anomalies):
        chosen = [normals, _first(anomalies, want)]
    else:
        chosen = [_first(normals, round(len(anomalies) * (1 - anomaly_share) / anomaly_share)), anomalies]
    return pd.concat(chosen).sort_values("row")


def select(manifest: pd.DataFrame, train_anomaly_ratio: float, test_anomaly_share: float
           ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return (training_rows(manifest, train_anomaly_ratio), validation_rows(manifest),
            test_rows(manifest, test_anomaly_share))
