"""The end of `make run`: gate the trained model and say plainly what came out.

    python -m pipelines.summary              # after `dvc repro`: promote (or not), then the summary
    python -m pipelines.summary --no-promote # the summary of the last run only

Runs the promotion gate (``pipelines.promotion.register_and_promote``), writes its decision
to ``reports/promotion.json`` and prints a short table: test AUROC with its 95 % interval,
the darkest quintile, false alarms on dark images, the promotion decision and why, the
MLflow run and version, a warning when the model is no better than chance, and where to
look next.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from danvae.config import load_params
from danvae.data.validation.data_docs import data_docs_index
from pipelines.promotion import register_and_promote
from pipelines.stages.common import USER_ERRORS, format_figure, read_run, write_json

PROMOTION = Path("reports/promotion.json")
METRICS = Path("reports/metrics.json")


def _share(value) -> str:
    return "–" if value is None else f"{value:.0%}"


def summary_lines(metrics: dict, run: dict, promotion: dict | None) -> list[str]:
    """The summary as lines of text (no I/O)."""
    low, high = metrics.get("auroc_low"), metrics.get("auroc_high")
    interval = f" (95 % interval {format_figure(low)}–{format_figure(high)})" if low is not None else ""
    rows = [
        ("test images", f"{metrics.get('n_images')} ({metrics.get('n_anomalies')} defective)"),
        ("image AUROC", f"{format_figure(metrics.get('auroc'))}{interval}"),
        ("darkest-quintile AUROC", format_figure(metrics.get("auroc_darkest"))),
        ("false alarms, all normals", _share(metrics.get("fpr"))),
        ("false alarms, darkest normals", _share(metrics.get("fpr_darkest"))),
        ("defects found at the threshold", _share(metrics.get("recall"))),
        ("MLflow run", f"{run.get('run_id')} (experiment {run.get('experiment')})"),
    ]
    if promotion is not None:
        version = f"{promotion.get('registered_model')} v{promotion.get('version')}"
        decision, reason = str(promotion.get("decision")), str(promotion.get("reason"))
        rows.append(("promotion", f"{version}: {reason if reason.startswith(decision) else f'{decision} — {reason}'}"))
    width = max(len(k) for k, _ in rows)
    lines = ["", "Run summary", *[f"  {k.ljust(width)}  {v}" for k, v in rows]]
    worst = low if low is not None else metrics.get("auroc")
    if worst is None or worst <= 0.5:
        lines += ["", "  WARNING: this model is no better than chance on its test split: it does not find defects."]
    lines += ["", "  Next: reports/report.md (figures in reports/figures/), `make ui` for the MLflow runs and registry,"
                  f" {data_docs_index(Path('.')).as_posix()} for the data's validation (Great Expectations Data Docs)."]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-promote", action="store_true", help="only print the summary of the last run")
    args = ap.parse_args(argv)
    try:
        params = load_params("params.yaml")
        run = read_run()
        if not METRICS.exists():
            raise FileNotFoundError(f"{METRICS} not found: run `make run` (dvc repro) first")
        promotion = None
        if not args.no_promote:
            promotion = register_and_promote(Path("."), params)
            write_json(PROMOTION, promotion)
        elif PROMOTION.exists():
            promotion = json.loads(PROMOTION.read_text())
        metrics = json.loads(METRICS.read_text())
    except USER_ERRORS as exc:
        print(f"summary: error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(summary_lines(metrics, run, promotion)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
