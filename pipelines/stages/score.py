"""Stage score: every manifest image → reports/scores.csv (all score kinds) and sample heatmaps."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from danvae.config import Params
from danvae.data.ingest import load_images, load_manifest
from danvae.data.selection import test_rows
from danvae.detector import Detector
from danvae.tracking import configure_tracking, log_to_run
from pipelines.stages.common import read_run, run_stage

DATA = Path("data")
SCORES = Path("reports/scores.csv")
HEATMAPS = Path("reports/heatmaps.npz")
N_HEATMAPS = 16


def main(params: Params) -> None:
    manifest = load_manifest(DATA).sort_values("row").reset_index(drop=True)
    images = load_images(DATA)
    detector = Detector.load("models/detector")
    table = detector.score_table(images[manifest["row"].to_numpy()])
    test_ids = set(test_rows(manifest, params.data.test_anomaly_share)["id"])
    meta = manifest[["id", "path", "split", "label", "defect"]].copy()
    meta["in_test_set"] = meta["id"].isin(test_ids)
    out = meta.join(table)
    SCORES.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(SCORES, index=False)

    sample = manifest[meta["in_test_set"] & (manifest["label"] == "anomaly")].head(N_HEATMAPS)
    _, maps = detector.score_table(images[sample["row"].to_numpy()], heatmaps=True)
    np.savez_compressed(HEATMAPS, ids=sample["id"].to_numpy(dtype=str), heatmaps=maps)
    configure_tracking(root=Path.cwd())  # the DVC stage runs in the project it belongs to
    log_to_run(read_run()["run_id"], {"scored_images": len(out), "flagged_share": float(out["is_anomaly"].mean())},
               prefix="score")
    print(f"score: {len(out)} images ({int(out['in_test_set'].sum())} in the test set), "
          f"{int(out['is_anomaly'].sum())} flagged; heatmaps for {len(sample)}")


if __name__ == "__main__":
    run_stage("score", main)
