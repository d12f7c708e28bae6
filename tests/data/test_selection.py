"""Which manifest rows train, calibrate and test a detector (danvae.data.selection), on a
hand-made manifest whose id order differs from its row order."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from danvae.data import selection

# split -> (normals, anomalies, unknown)
COUNTS = {"train": (40, 20, 3), "val": (10, 5, 2), "test": (30, 25, 2)}


def _manifest(counts: dict[str, tuple[int, int, int]] = COUNTS, seed: int = 0) -> pd.DataFrame:
    rows = [(split, label) for split, (n, a, u) in counts.items()
            for label, k in (("normal", n), ("anomaly", a), ("unknown", u)) for _ in range(k)]
    rng = np.random.default_rng(seed)
    ids = [f"{x:016x}" for x in rng.choice(2**48, len(rows), replace=False)]
    table = pd.DataFrame(rows, columns=["split", "label"]).assign(id=ids)
    return table.sample(frac=1, random_state=seed).reset_index(drop=True).assign(row=lambda t: t.index)


def _lowest_ids(manifest: pd.DataFrame, split: str, label: str, n: int) -> set[str]:
    rows = manifest[(manifest.split == split) & (manifest.label == label)]
    return set(rows.sort_values("id").id.head(n))


def test_training_rows_are_every_train_normal_and_ratio_times_as_many_labelled_anomalies():
    """All train normals, round(ratio × normals) train anomalies (the lowest ids), nothing from
    val/test, no unlabelled image; in row order."""
    manifest = _manifest()
    train = selection.training_rows(manifest, anomaly_ratio=0.1)
    assert set(train.split) == {"train"}
    assert (train.label == "normal").sum() == 40 and (train.label == "anomaly").sum() == 4
    assert set(train.id[train.label == "anomaly"]) == _lowest_ids(manifest, "train", "anomaly", 4)
    assert train.row.is_monotonic_increasing
    assert (selection.training_rows(manifest, 0.0).label == "normal").all()
    assert (selection.training_rows(manifest, 5.0).label == "anomaly").sum() == 20  # capped by what there is


def test_training_anomalies_stay_when_later_images_arrive():
    """A new labelled anomaly with a higher id than those chosen does not displace them."""
    manifest = _manifest()
    before = set(selection.training_rows(manifest, 0.1).id)
    late = pd.DataFrame({"split": ["train"], "label": ["anomaly"], "id": ["f" * 16], "row": [len(manifest)]})
    after = set(selection.training_rows(pd.concat([manifest, late], ignore_index=True), 0.1).id)
    assert after == before


def test_validation_rows_are_every_labelled_val_image():
    """Every val normal and anomaly, no unlabelled image, nothing from other splits."""
    manifest = _manifest()
    val = selection.validation_rows(manifest)
    assert set(val.split) == {"val"} and len(val) == 15 and set(val.label) == {"normal", "anomaly"}


@pytest.mark.parametrize(("share", "normals", "anomalies"), [
    (0.3, 30, 13),  # round(0.3 / 0.7 × 30) anomalies of the 25 there are
    (0.6, 17, 25),  # anomalies run short: every one, and round(25 × 0.4 / 0.6) normals
])
def test_test_rows_hold_the_asked_anomaly_share(share: float, normals: int, anomalies: int):
    """Anomalies make up ``share`` of the test rows (to within one image); when there are too few,
    normals are dropped (lowest ids kept) rather than the share missed."""
    manifest = _manifest()
    test = selection.test_rows(manifest, share)
    assert set(test.split) == {"test"} and set(test.label) == {"normal", "anomaly"}
    assert ((test.label == "normal").sum(), (test.label == "anomaly").sum()) == (normals, anomalies)
    assert abs((test.label == "anomaly").mean() - share) <= 1 / len(test)
    thinned = "anomaly" if anomalies < 25 else "normal"
    n = anomalies if thinned == "anomaly" else normals
    assert set(test.id[test.label == thinned]) == _lowest_ids(manifest, "test", thinned, n)


def test_the_three_selections_do_not_overlap():
    """No image is in two of train / val / test, and each comes only from its own split."""
    manifest = _manifest()
    train, val, test = selection.select(manifest, train_anomaly_ratio=1.0, test_anomaly_share=0.5)
    for part, split in ((train, "train"), (val, "val"), (test, "test")):
        assert set(part.split) == {split}
    ids = [set(part.id) for part in (train, val, test)]
    rows = [set(part.row) for part in (train, val, test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])
