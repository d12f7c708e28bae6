"""Stage validate: the manifest against the Great Expectations suite and the drift gate."""
from __future__ import annotations

import sys
from pathlib import Path

from danvae.config import Params
from danvae.data.ingest import load_manifest
from danvae.data.validation import validate_manifest
from pipelines.stages.common import run_stage, write_json

REPORT = Path("reports/validation.json")


def main(params: Params) -> None:
    report = validate_manifest(load_manifest("data"), params.validate_, data=params.data)
    write_json(REPORT, report.to_dict(include_gx_result=True))
    drift = report.drift.message if report.drift else "no drift check"
    print(f"validate: {len(report.checks)} checks, {len(report.warnings)} warnings; {drift}")
    if not report.success:
        print(f"validate: FAILED: {report.failure_message()}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_stage("validate", main)
