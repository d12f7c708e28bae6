"""Both notebooks execute, top to bottom, against a tiny pipeline run in a copy of the repo.

The kernel is ``python3`` as nbclient finds it; jupyter_client starts a kernelspec whose
command is ``python`` with the interpreter running the tests, i.e. the venv's (checked
below), so the notebooks import the same danvae, pandas and mlflow as the tests.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

from pipelines.sweep import gather_table
from tests.pipeline.conftest import make_repo

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
EXPLORE = NOTEBOOKS / "01-explore-data.ipynb"
RESULTS = NOTEBOOKS / "02-results.ipynb"


def execute(path_or_nb, cwd: Path, timeout: int = 600) -> nbformat.NotebookNode:
    nb = path_or_nb if isinstance(path_or_nb, nbformat.NotebookNode) else nbformat.read(path_or_nb, as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=timeout, resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def text_output(nb: nbformat.NotebookNode) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                out.append(o.get("text", ""))
            elif "data" in o:
                out.append(o["data"].get("text/plain", ""))
    return "\n".join(out)


def images_shown(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.parametrize("path", [EXPLORE, RESULTS], ids=lambda p: p.name)
def test_notebooks_are_valid_and_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), "clear outputs before committing"
    assert "parameters" in code[0].metadata.get("tags", []) and "DANVAE_PROJECT" in code[0].source


def test_the_python3_kernel_is_this_interpreter(tmp_path):
    nb = execute(new_notebook(cells=[new_code_cell("import sys; print(sys.prefix)")]), tmp_path, timeout=120)
    assert Path(text_output(nb).strip()) == Path(sys.prefix)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("nbrepo"))
    repo.dvc("repro")
    return repo.path


@pytest.fixture
def notebook_env(tiny_run, tmp_path, monkeypatch) -> Path:
    figures = tmp_path / "figures"
    monkeypatch.setenv("DANVAE_PROJECT", str(tiny_run))
    monkeypatch.setenv("DANVAE_NOTEBOOK_FIGURES", str(figures))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the copy's own mlflow.db
    monkeypatch.delenv("DANVAE_SWEEP_DIR", raising=False)
    return figures


@pytest.mark.slow
def test_explore_notebook_runs_on_the_tiny_data(tiny_run, notebook_env):
    nb = execute(EXPLORE, tiny_run)
    for name in ("brightness_hist.png", "images_by_lighting.png"):
        assert (notebook_env / name).stat().st_size > 1000
    assert images_shown(nb) >= 2
    assert "126 images" in text_output(nb)  # 90 normal + 36 anomalies in the tiny params


@pytest.mark.slow
def test_results_notebook_runs_and_draws_the_comparison(tiny_run, notebook_env):
    nb = execute(RESULTS, tiny_run)
    for name in ("last_run.png", "auroc_by_score.png", "mlflow_runs.png"):
        assert (notebook_env / name).stat().st_size > 1000
    assert "1 run(s) in experiment 'danvae'" in text_output(nb)
    assert "no sweep table" in text_output(nb)


@pytest.mark.slow
def test_results_notebook_draws_a_sweep_table_when_there_is_one(tiny_run, notebook_env, tmp_path, monkeypatch):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    rows = [{"model.name": m, "model.zx_dim": zx, "data.train_anomaly_ratio": r, "auroc": 0.6 + 0.01 * zx / 24,
             "auroc_darkest": 0.55, "brightness_spearman_normal": -0.3, "r2_zy": None if m != "danvae" else 0.9,
             "r2_zx": 0.5, "experiment": f"{m}-{zx}-{r}", "timestamp": "2026-01-01T00:00:00"}
            for m in ("vae", "dpvae", "danvae") for zx in (24, 56) for r in (0.05, 0.1) if m != "vae" or r == 0.05]
    gather_table(rows).to_csv(sweep / "sweep.csv", index=False)
    monkeypatch.setenv("DANVAE_SWEEP_DIR", str(sweep))
    nb = execute(RESULTS, tiny_run)
    assert (notebook_env / "sweep_comparison.png").stat().st_size > 1000
    assert "danvae" in text_output(nb) and "no sweep table" not in text_output(nb)
