"""The end-of-run summary: figures with their interval, the promotion decision, a chance warning."""
from __future__ import annotations

from pipelines.summary import summary_lines

RUN = {"run_id": "abc123", "experiment": "danvae"}
PROMOTED = {"registered_model": "danvae-surface", "version": "1", "decision": "promoted",
            "reason": "first champion: AUROC 0.90 >= 0.6"}


def _metrics(auroc, low, high):
    return {"n_images": 173, "n_anomalies": 52, "auroc": auroc, "auroc_low": low, "auroc_high": high,
            "auroc_darkest": 0.81, "fpr": 0.04, "fpr_darkest": 0.08, "recall": 0.7}


def test_a_good_model_gets_its_figures_and_decision_and_no_warning():
    text = "\n".join(summary_lines(_metrics(0.91, 0.86, 0.95), RUN, PROMOTED))
    assert "0.910 (95 % interval 0.860–0.950)" in text
    assert "danvae-surface v1: promoted — first champion" in text
    assert "abc123" in text and "8%" in text and "reports/report.md" in text and "make ui" in text
    assert "WARNING" not in text
    said_twice = {**PROMOTED, "reason": "promoted: first champion"}
    assert "v1: promoted: first champion" in "\n".join(summary_lines(_metrics(0.91, 0.86, 0.95), RUN, said_twice))


def test_a_model_whose_interval_reaches_chance_is_called_out():
    text = "\n".join(summary_lines(_metrics(0.58, 0.49, 0.66), RUN, None))
    assert "WARNING: this model is no better than chance" in text
    assert "promotion" not in text.split("Next:")[0]
