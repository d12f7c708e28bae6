"""Stage evaluate: test-set scores and heatmaps → reports/metrics.json, plot data, figures and report.md."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from danvae.config import Params
from danvae.data.manifest import load_images, load_manifest
from danvae.data.selection import training_rows
from danvae.detector import Detector
from danvae.evaluation.report import evaluate_run
from danvae.mlops.runs import log_to_run
from danvae.mlops.tracking import configure_tracking
from pipelines.paths import DATA, VALIDATION_REPORT
from pipelines.stages.common import format_figure, read_run, run_stage

SCORES = Path("reports/scores.csv")
HEATMAPS = Path("reports/heatmaps.npz")
OUT = Path("reports")


def stored_masks(rows: pd.DataFrame) -> list[np.ndarray | None]:
    """The defect masks ingest stored beside the images (None where an image has none)."""
    return [np.asarray(Image.open(DATA / p).convert("L")) if p else None for p in rows["mask_path"]]


def main(params: Params) -> None:
    manifest = load_manifest(DATA)
    images = load_images(DATA)
    scores = pd.read_csv(SCORES, keep_default_na=False)
    test_ids = scores.loc[scores["in_test_set"].astype(str) == "True", "id"]
    test = manifest.set_index("id").loc[test_ids].reset_index()
    table = scores.set_index("id").loc[test_ids].reset_index()
    table["is_anomaly"] = table["is_anomaly"].astype(str) == "True"
    with np.load(HEATMAPS) as stored:
        position = {i: k for k, i in enumerate(stored["ids"])}
        heatmaps = stored["heatmaps"][[position[i] for i in test_ids]]
    docs = json.loads(VALIDATION_REPORT.read_text()).get("data_docs") if VALIDATION_REPORT.exists() else None
    docs = Path(docs) if docs and Path(docs).is_file() else None
    train = training_rows(manifest, params.data.train_anomaly_ratio)
    train = train[train["label"] == "normal"]
    result = evaluate_run(Detector.load("models/detector"), images[test["row"].to_numpy()], table,
                          train_images=images[train["row"].to_numpy()],
                          train_brightness=train["brightness"].to_numpy(),
                          masks=stored_masks(test) if (test["mask_path"] != "").any() else None,
                          heatmaps=heatmaps, out_dir=OUT, data_docs=docs)
    configure_tracking(root=Path.cwd())  # the DVC stage runs in the project it belongs to
    run_id = read_run()["run_id"]
    log_to_run(run_id, result["metrics"], [Path(f) for f in result["files"]], prefix="test",
               artifact_path="evaluation")
    if docs is not None:
        log_to_run(run_id, artifacts=[docs], artifact_path="data_docs")
    m = result["metrics"]
    shown = [("AUROC", "auroc"), ("darkest-quintile AUROC", "auroc_darkest"),
             ("brightness ρ (normals)", "brightness_spearman_normal"), ("R²(z_y)", "r2_zy"), ("R²(z_x)", "r2_zx")]
    print("evaluate: " + ", ".join(f"{label} {format_figure(m.get(key))}" for label, key in shown))


if __name__ == "__main__":
    run_stage("evaluate", main)
