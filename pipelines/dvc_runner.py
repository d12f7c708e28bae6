"""DVC stages run from Python: ``dvc repro --single-item <stage>`` with its output logged, its
failure classified (a refused validation, a stage's user error, or a transient failure worth
retrying), and ``dvc status``. Nothing here knows Prefect; the flows wrap it in tasks."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from pipelines.env import PROJECT_ROOT, tool_env

STAGES = tuple(yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"])  # in the pipeline's order
_PROGRESS = re.compile(r"\d+%\|.*\||it/s\]|s/it\]")
_DVC_HINTS = ("To track the changes with git", "git add ", "To enable auto staging", "dvc config core.autostage",
              "Use `dvc push`")


class StageFailed(RuntimeError):
    """A DVC stage ended non-zero; ``retriable`` says whether trying again can help."""

    def __init__(self, stage: str, message: str, returncode: int | None = None, retriable: bool = True):
        super().__init__(message)
        self.stage, self.message, self.returncode, self.retriable = stage, message, returncode, retriable


class ValidationStageFailed(StageFailed):
    """The validate stage refused the data (critical expectation or brightness drift): never retried."""

    def __init__(self, message: str, returncode: int | None = None):
        super().__init__("validate", message, returncode, retriable=False)


def stage_failure(stage: str, lines: list[str], returncode: int) -> StageFailed:
    """Turn a failed ``dvc repro`` into the right error: validation, a user error, or transient."""
    text = "\n".join(lines)
    failed = re.search(rf"^{stage}: FAILED: .*$", text, re.M)
    if stage == "validate" and failed:
        return ValidationStageFailed(failed.group(0), returncode)
    user = re.search(rf"^{stage}: error: .*$", text, re.M)
    if user:
        return StageFailed(stage, user.group(0), returncode, retriable=False)
    dvc_errors = [ln for ln in lines if ln.startswith("ERROR:")]
    detail = dvc_errors[-1] if dvc_errors else (lines[-1] if lines else "no output")
    if returncode < 0:
        detail = f"killed by signal {-returncode}; {detail}"
    return StageFailed(stage, f"{stage}: dvc repro failed ({returncode}): {detail}", returncode, retriable=True)


def run_dvc_stage(stage: str, root: Path, logger=None) -> dict[str, Any]:  # noqa: ANN001
    """``dvc repro --single-item <stage>`` in ``root``; its output is logged line by line.

    Returns {"stage", "ran", "skipped", "seconds", "message"}; raises :class:`StageFailed`.
    """
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    start = time.monotonic()
    lines: list[str] = []
    proc = subprocess.Popen(cmd, cwd=root, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", bufsize=1)
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.rstrip()
        if not line.strip() or _PROGRESS.search(line):
            continue
        lines.append(line)
        if logger is not None and not line.strip().startswith(_DVC_HINTS):
            logger.info("%s", line)
    returncode = proc.wait()
    seconds = round(time.monotonic() - start, 1)
    if returncode != 0:
        raise stage_failure(stage, lines, returncode)
    text = "\n".join(lines)
    skipped = f"Stage '{stage}' didn't change, skipping" in text
    ran = f"Running stage '{stage}'" in text
    summary = next((ln for ln in reversed(lines) if ln.startswith(f"{stage}:")), "")
    message = (f"{stage}: up to date, skipped by DVC" if skipped else
               f"{stage}: ran in {seconds:g} s" + (f" ({summary.split(':', 1)[1].strip()})" if summary else ""))
    return {"stage": stage, "ran": ran, "skipped": skipped, "seconds": seconds, "message": message}


def dvc_stale(root: Path) -> list[str]:
    """Stages ``dvc status`` reports as changed (read-only; [] when up to date or when DVC cannot tell)."""
    proc = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=root, env=tool_env(),
                          capture_output=True, text=True, timeout=300)
    try:
        status = json.loads(proc.stdout or "{}")
    except json.JSONDecodeError:
        return []
    return sorted(k.split(":")[-1] for k in status) if isinstance(status, dict) else []
