"""Where a run's code came from: the project's git commit and whether its files differ from it."""
from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

from danvae.mlops.tracking import project_root


def git_commit(cwd: str | Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of the project (None outside a repository or without git)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or project_root(), capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = done.stdout.strip()
    return sha if done.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", sha) else None


def git_dirty(cwd: str | Path | None = None, ignore: Iterable[str] = ()) -> bool | None:
    """True when tracked files differ from HEAD (None when git cannot tell). ``ignore``: paths
    (files or folders, relative to the repository root) whose changes do not count, such as
    what a pipeline writes before its train stage runs."""
    excluded = [f":(top,exclude){p}" for p in ignore]
    try:
        done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/", *excluded],
                              cwd=cwd or project_root(), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(done.stdout.strip()) if done.returncode == 0 else None
