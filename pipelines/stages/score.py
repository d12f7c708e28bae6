"""Stage score: every manifest image → reports/scores.csv (all score kinds); the test set's heatmaps → reports/heatmaps.npz."""
from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from danvae.config import DaskConfig, Params
from danvae.dask_scoring import score_on_dask
from danvae.data.ingest import load_images, load_manifest
from danvae.data.selection import test_rows
from danvae.detector import Detector
from danvae.tracking import configure_tracking, log_to_run
from pipelines.stages.common import read_run, run_stage

DATA = Path("data")
MODEL_DIR = Path("models/detector")
SCORES = Path("reports/scores.csv")
HEATMAPS = Path("reports/heatmaps.npz")


def _scorer(detector: Detector, dask: DaskConfig) -> Callable[..., tuple[pd.DataFrame, np.ndarray | None]]:
    """``score(images, heatmaps)`` in this process, or fanned out on Dask (the same table)."""
    if dask.enabled:
        return functools.partial(score_on_dask, MODEL_DIR, workers=dask.workers, address=dask.address,
                                 batch_size=detector.score_config.batch_size)

    def here(images: np.ndarray, heatmaps: bool) -> tuple[pd.DataFrame, np.ndarray | None]:
        out = detector.score_table(images, heatmaps=heatmaps)
        return out if heatmaps else (out, None)

    return here


def main(params: Params) -> None:
    manifest = load_manifest(DATA).sort_values("row").reset_index(drop=True)
    images = load_images(DATA)
    detector = Detector.load(MODEL_DIR)
    test_ids = set(test_rows(manifest, params.data.test_anomaly_share)["id"])
    meta = manifest[["id", "path", "split", "label", "defect"]].copy()
    meta["in_test_set"] = meta["id"].isin(test_ids)
    in_test = meta["in_test_set"].to_numpy()
    rows = manifest["row"].to_numpy()
    score = _scorer(detector, params.dask)
    # heatmaps are kept for the test set only (the evaluate stage's pixel AUROC and figures)
    test_table, maps = score(images[rows[in_test]], heatmaps=True)
    parts = [test_table.set_index(np.flatnonzero(in_test))]
    if (~in_test).any():
        parts.append(score(images[rows[~in_test]], heatmaps=False)[0].set_index(np.flatnonzero(~in_test)))
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
