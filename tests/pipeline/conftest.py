"""A throwaway copy of the repository with tiny params, for real `dvc repro` runs."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

TINY = {
    "data": {
        "sources": [{"type": "synthetic", "name": "synthetic", "n_normal": 90, "n_anomaly": 36, "size": 32,
                     "dark_share": 0.15, "difficulty": "easy", "seed": 0}],
        "image_size": 32,
    },
    "model": {"zx_dim": 8, "zy_dim": 2},
    "train": {"epochs": 2, "warmup_epochs": 1, "batch_size": 32},
    "validate": {"min_per_split": 5},
}


def deep_update(base: dict, new: dict) -> dict:
    for k, v in new.items():
        base[k] = deep_update(dict(base.get(k) or {}), v) if isinstance(v, dict) else v
    return base


def tool_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", GX_ANALYTICS_ENABLED="false",
               GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@localhost",
               GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@localhost")
    return env


class Repo:
    def __init__(self, path: Path):
        self.path = path
        self.env = tool_env()
        self.env["DVC_SITE_CACHE_DIR"] = str(path / ".dvc" / "tmp" / "site_cache")

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, cwd=self.path, env=self.env, capture_output=True, text=True, timeout=900)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", "dvc", *args, check=check)

    def set_params(self, changes: dict) -> None:
        path = self.path / "params.yaml"
        path.write_text(yaml.safe_dump(deep_update(yaml.safe_load(path.read_text()), changes), sort_keys=False))


def make_repo(dest: Path, params: dict = TINY) -> Repo:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        src = ROOT / rel
        if src.is_file() and not rel.startswith(("tests/", "notebooks/", "benchmarks/")) and rel != "dvc.lock":
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    (dest / "data" / "incoming").mkdir(parents=True, exist_ok=True)
    repo = Repo(dest)
    repo.set_params(params)
    repo.run("git", "init", "-q")
    repo.run("git", "add", "-A")
    repo.run("git", "commit", "-qm", "copy")
    return repo


@pytest.fixture
def tiny_repo(tmp_path) -> Repo:
    return make_repo(tmp_path)
