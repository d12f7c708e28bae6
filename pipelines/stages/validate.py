"""Stage validate: the manifest against the Great Expectations suite and the drift gate."""
from __future__ import annotations

import sys
from pathlib import Path

from danvae.config import Params
from danvae.data.manifest import load_manifest
from danvae.data.validation import validate_manifest
from danvae.data.validation.data_docs import DataDocsError, build_data_docs
from pipelines.paths import DATA, VALIDATION_REPORT
from pipelines.stages.common import run_stage, write_json



def main(params: Params) -> None:
    report = validate_manifest(load_manifest(DATA), params.validate_, data=params.data)
    summary = report.to_dict(include_gx_result=True)
    try:
        if report.gx_result is None:
            raise DataDocsError("the suite did not run, so there is no result to render")
        summary["data_docs"] = build_data_docs(report.gx_result, Path.cwd()).relative_to(Path.cwd()).as_posix()
    except DataDocsError as exc:  # the docs are a view of the result; the result itself stands
        print(f"validate: warning: {exc}", file=sys.stderr)
    write_json(VALIDATION_REPORT, summary)
    drift = report.drift.message if report.drift else "no drift check"
    docs = f"; Data Docs {summary['data_docs']}" if "data_docs" in summary else ""
    print(f"validate: {len(report.checks)} checks, {len(report.warnings)} warnings; {drift}{docs}")
    if not report.success:
        print(f"validate: FAILED: {report.failure_message()}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_stage("validate", main)
