"""Stage score: every manifest image → reports/scores.csv (all score kinds); the test set's heatmaps → reports/heatmaps.npz."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd

from danvae.config import Params
from danvae.dask_scoring import score_anywhere
from danvae.data.manifest import load_images, load_manifest
from danvae.data.nuisance import factor_values
from danvae.data.selection import test_rows
from danvae.detector import Detector
from danvae.mlops.runs import log_to_run
from danvae.mlops.tracking import configure_tracking
from pipelines.paths import DATA
from pipelines.stages.common import read_run, run_stage

MODEL_DIR = Path("models/detector")
SCORES = Path("reports/scores.csv")
HEATMAPS = Path("reports/heatmaps.npz")


def main(params: Params) -> None:
    manifest = load_manifest(DATA).sort_values("row").reset_index(drop=True)
    images = load_images(DATA)
    detector = Detector.load(MODEL_DIR)
    test_ids = set(test_rows(manifest, params.data.test_anomaly_share)["id"])
    meta = manifest[["id", "path", "split", "label", "defect"]].copy()
    meta["in_test_set"] = meta["id"].isin(test_ids)
    in_test = meta["in_test_set"].to_numpy()
    rows = manifest["row"].to_numpy()
    score = functools.partial(score_anywhere, detector, MODEL_DIR, workers=params.dask.workers,
                              address=params.dask.address)
    # heatmaps are kept for the test set only (the evaluate stage's pixel AUROC and figures)
    factor = factor_values(manifest, params.data.nuisance)
    test_table, maps = score(images[rows[in_test]], heatmaps=True,
                             nuisance=None if factor is None else factor[in_test])
    parts = [test_table.set_index(np.flatnonzero(in_test))]
    if (~in_test).any():
        rest = score(images[rows[~in_test]], heatmaps=False, nuisance=None if factor is None else factor[~in_test])
        parts.append(rest[0].set_index(np.flatnonzero(~in_test)))
    out = meta.join(pd.concat(parts).sort_index())
    SCORES.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(SCORES, index=False)
    np.savez_compressed(HEATMAPS, ids=meta["id"][in_test].to_numpy(dtype=str), heatmaps=maps)
    configure_tracking(root=Path.cwd())  # the DVC stage runs in the project it belongs to
    log_to_run(read_run()["run_id"], {"scored_images": len(out), "flagged_share": float(out["is_anomaly"].mean())},
               prefix="score")
    where = f" on Dask ({params.dask.address or f'{params.dask.workers} local workers'})" if params.dask.enabled else ""
    print(f"score: {len(out)} images{where} ({int(in_test.sum())} in the test set, with heatmaps), "
          f"{int(out['is_anomaly'].sum())} flagged")


if __name__ == "__main__":
    run_stage("score", main)
