"""Stage evaluate: test-set scores → reports/metrics.json and plot data for `dvc plots`."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from danvae.config import Params
from danvae.evaluate import evaluate_scores
from pipelines.stages.common import run_stage, write_json

SCORES = Path("reports/scores.csv")
METRICS = Path("reports/metrics.json")


def main(params: Params) -> None:
    scores = pd.read_csv(SCORES, keep_default_na=False)
    test = scores[scores["in_test_set"].astype(str) == "True"]
    metrics = evaluate_scores(test)
    write_json(METRICS, metrics)
    print(f"evaluate: AUROC {metrics['auroc']}, darkest-quintile AUROC {metrics['auroc_darkest']}, "
          f"brightness ρ (normals) {metrics['brightness_spearman_normal']}")


if __name__ == "__main__":
    run_stage("evaluate", main)
