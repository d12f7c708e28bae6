"""Where the pipeline keeps things, relative to the project folder (DVC runs every stage there)."""
from __future__ import annotations

import json
from pathlib import Path

DATA = Path("data")
VALIDATION_REPORT = Path("reports/validation.json")
RUN_FILE = Path("models/run.json")


def validation_passed(project: Path = Path(".")) -> bool:
    """Whether the validate stage's last report under ``project`` says the data passed."""
    report = Path(project) / VALIDATION_REPORT
    return report.exists() and bool(json.loads(report.read_text()).get("success"))
