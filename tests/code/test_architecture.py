"""The layers hold and nothing imports in a loop (import-linter contracts in pyproject.toml)."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_hold():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert {c["type"] for c in contracts} >= {"forbidden", "acyclic_siblings"}
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    for contract in contracts:
        assert f"{contract['name']} KEPT" in done.stdout


def test_the_readme_layout_matches_the_tree():
    block = re.search(r"## Layout\n.*?```\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    packages = {p.parent.name for p in (ROOT / "danvae").glob("*/__init__.py")}
    assert set(re.findall(r"^  (\w+)/", block, re.M)) == packages, "each package of danvae/, and no other, is listed"
    listed = set(re.findall(r"\b\w+\.py\b", block))
    for folder in (ROOT / "danvae", ROOT / "danvae" / "evaluation", ROOT / "danvae" / "mlops"):
        present = {p.name for p in folder.glob("*.py")} - {"__init__.py"}
        assert present <= listed, f"{folder.name}: {sorted(present - listed)} not in the README's layout"
        assert present, folder


def test_the_library_type_checks():
    """mypy (settings in pyproject.toml, the pydantic plugin on) finds no error in danvae/."""
    mypy = Path(sys.executable).parent / "mypy"
    done = subprocess.run([str(mypy)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Success: no issues found" in done.stdout
