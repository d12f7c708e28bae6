"""Great Expectations Data Docs for the manifest's validation results, in a file-backed GX
context inside the project.

    page = build_data_docs(report.gx_result, project_root)   # <root>/gx/uncommitted/data_docs/local_site/...

The suite runs in memory (``gx_suite``); each result is then stored in the file context at
``<root>/gx`` and the site rebuilt, so ``index.html`` lists every validation run so far and
each run has its own page naming every expectation with its observed value.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


CONTEXT_DIR = "gx"  # what GX itself calls the folder of a file-backed context
SITE = "local_site"


class DataDocsError(RuntimeError):
    """The Data Docs could not be written (the validation itself is unaffected)."""


def data_docs_index(root: str | Path) -> Path:
    """Where the site's front page lies under the project ``root``."""
    return Path(root) / CONTEXT_DIR / "uncommitted" / "data_docs" / SITE / "index.html"


def build_data_docs(gx_result: Any, root: str | Path) -> Path:
    """Store ``gx_result`` (an ExpectationSuiteValidationResult) in the file context under
    ``root`` and rebuild the Data Docs; returns the HTML page of this result."""
    import great_expectations as gx
    from great_expectations.data_context.types.resource_identifiers import (ExpectationSuiteIdentifier,
                                                                            ValidationResultIdentifier)

    root = Path(root).resolve()
    try:
        context = gx.get_context(mode="file", project_root_dir=str(root))
        batch = (gx_result.meta.get("active_batch_definition") or {}).get("data_asset_name") or "manifest"
        key = ValidationResultIdentifier(
            expectation_suite_identifier=ExpectationSuiteIdentifier(name=gx_result.suite_name),
            run_id=gx_result.meta["run_id"], batch_identifier=batch)
        context.validation_results_store.set(key, gx_result)
        context.build_data_docs(site_names=[SITE], resource_identifiers=[key])
        url = context.get_docs_sites_urls(resource_identifier=key, site_name=SITE)[0]["site_url"]
    except (OSError, KeyError, ValueError, gx.exceptions.GreatExpectationsError) as exc:
        raise DataDocsError(f"could not write Data Docs under {root / CONTEXT_DIR}: {exc}") from exc
    page = Path(str(url).removeprefix("file://"))
    if not page.is_file():
        raise DataDocsError(f"GX reported {url} but wrote no such page")
    return page
