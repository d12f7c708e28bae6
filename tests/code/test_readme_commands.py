"""The README's `danvae` block runs as written, in a fresh folder, with the venv's tools on the
path as the README says; only fewer images and epochs are appended (a later flag wins in
argparse), so a renamed flag, a missing command or a wrong path fails here."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
FASTER = {"generate": ["--normal", "60", "--anomaly", "12", "--size", "32"],
          "train": ["--epochs", "2", "--warmup-epochs", "1", "--image-size", "32"]}


def readme_block(heading: str) -> list[str]:
    """The commands of the first bash block under ``heading``, without comments and optional [...] parts."""
    text = README.read_text()
    block = re.search(re.escape(heading) + r".*?```bash\n(.*?)```", text, re.S).group(1)
    commands = []
    for line in block.splitlines():
        line = re.sub(r"\s+#.*$", "", re.sub(r"\[[^\]]*\]", "", line)).strip()
        if line:
            commands.append(line)
    return commands


@pytest.mark.slow
def test_the_danvae_block_runs_as_written(tmp_path):
    commands = readme_block("## The `danvae` command")
    assert [shlex.split(c)[:2] for c in commands] == [
        ["danvae", "generate"], ["danvae", "train"], ["danvae", "train"], ["danvae", "train"],
        ["danvae", "score"], ["danvae", "predict"], ["danvae", "export"], ["danvae", "evaluate"]], commands
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for command in commands:
        argv = shlex.split(command)
        done = subprocess.run(argv + FASTER.get(argv[1], []), cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
        assert "Traceback" not in done.stderr, command
    assert len(pd.read_csv(tmp_path / "scores.csv")) == 72
    assert (tmp_path / "predictions" / "predictions.csv").exists() and (tmp_path / "metrics.json").exists()
    assert (tmp_path / "runs" / "a" / "run_config.json").exists() and (tmp_path / "model.onnx").stat().st_size > 0
