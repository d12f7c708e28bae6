"""The thesis-grid sweep: the pure table functions, and a real 2-experiment DVC sweep on tiny params."""
from __future__ import annotations

import math
import sys

import pandas as pd
import pytest

from pipelines import sweep, sweep_table
from tests.pipeline.conftest import make_repo

METRICS = {"auroc": 0.7, "auroc_darkest": 0.6, "brightness_spearman_normal": -0.2, "r2_zy": 0.9, "r2_zx": 0.1,
           "auroc_by_score": {"kl_zx": 0.7}}


def exp_rev(name, model, zx, ratio, metrics=METRICS, timestamp="2026-01-01T00:00:00", error=None):
    """One experiment as `dvc exp show --json` (DVC 3.67) lists it."""
    files = {"reports/metrics.json": {"data": metrics} if metrics else
             {"error": {"type": "FileNotFoundError", "msg": "No such file"}}}
    data = {"rev": name, "timestamp": timestamp, "metrics": files, "deps": {}, "outs": {}, "meta": {},
            "params": {"params.yaml": {"data": {"model": {"name": model, "zx_dim": zx},
                                                "data": {"train_anomaly_ratio": ratio}}}}}
    return {"revs": [{"rev": name * 5, "name": name, "data": data, "error": error, "experiments": None}],
            "executor": None, "name": name}


def show(*experiments):
    workspace = {"rev": "workspace", "name": None, "error": None, "experiments": None,
                 "data": {"rev": "workspace", "timestamp": None, "metrics": {"reports/metrics.json": {"data": METRICS}},
                          "params": {"params.yaml": {"data": {"model": {"name": "danvae", "zx_dim": 24},
                                                              "data": {"train_anomaly_ratio": 0.1}}}}}}
    baseline = {"rev": "a" * 40, "name": "master", "error": None, "data": {"rev": "a" * 40, "timestamp": None},
                "experiments": list(experiments)}
    return [workspace, baseline]


# ---- pure parts -------------------------------------------------------------------------


def test_grid_queues_vae_once_per_zx_unless_asked():
    points = sweep.grid()
    assert len(points) == 3 + 9 + 9
    vae = [p for p in points if p["model.name"] == "vae"]
    assert [(p["model.zx_dim"], p["data.train_anomaly_ratio"]) for p in vae] == [(24, 0.05), (56, 0.05), (120, 0.05)]
    assert len(sweep.grid(vae_every_ratio=True)) == 27
    assert sweep.queue_command(points[0], ["train.epochs=3"]) == [
        "exp", "run", "--queue", "-S", "tracking.alias=sweep", "-S", "model.name=vae", "-S", "model.zx_dim=24",
        "-S", "data.train_anomaly_ratio=0.05", "-S", "train.epochs=3"]


def test_rows_from_exp_show_keeps_finished_experiments_only():
    rows = sweep_table.rows_from_exp_show(show(
        exp_rev("done", "danvae", 24, 0.05),
        exp_rev("nometrics", "dpvae", 24, 0.05, metrics=None),
        exp_rev("broken", "vae", 24, 0.05, error={"type": "ReproductionError", "msg": "failed"}),
    ))
    assert [r["experiment"] for r in rows] == ["done"]  # not the workspace, not the others
    assert rows[0]["model.name"] == "danvae" and rows[0]["auroc"] == 0.7 and rows[0]["r2_zx"] == 0.1


def test_gather_table_sorts_dedupes_and_to_markdown_marks_vae():
    rows = sweep_table.rows_from_exp_show(show(
        exp_rev("d1", "danvae", 56, 0.2), exp_rev("v", "vae", 24, 0.05, {**METRICS, "r2_zy": None}),
        exp_rev("old", "dpvae", 24, 0.1, {**METRICS, "auroc": 0.1}, timestamp="2026-01-01T00:00:00"),
        exp_rev("new", "dpvae", 24, 0.1, {**METRICS, "auroc": 0.9}, timestamp="2026-01-02T00:00:00"),
        exp_rev("d0", "danvae", 24, 0.2)))
    table = sweep_table.gather_table(rows)
    assert list(table.columns) == sweep_table.TABLE_COLUMNS
    assert list(zip(table["model"], table["zx_dim"], table["ratio"])) == [
        ("vae", 24, 0.05), ("dpvae", 24, 0.1), ("danvae", 24, 0.2), ("danvae", 56, 0.2)]
    assert table.loc[1, "auroc"] == 0.9 and table.loc[1, "experiment"] == "new"
    assert math.isnan(table.loc[0, "r2_zy"])
    md = sweep_table.to_markdown(table)
    lines = md.splitlines()
    assert lines[0].startswith("| model | zx_dim | ratio | AUROC | AUROC darkest quintile |")
    assert "| vae | 24 | 0.05* | 0.700 | 0.600 | -0.200 | — | 0.100 |" in lines
    assert "does not change it" in md
    assert sweep_table.gather_table([]).empty


def test_rows_from_mlflow_reads_the_test_prefixed_metrics():
    runs = pd.DataFrame([
        {"run_id": "r1", "tags.mlflow.runName": "a", "start_time": pd.Timestamp("2026-01-01"),
         "params.model.name": "danvae", "params.model.zx_dim": "24", "params.data.train_anomaly_ratio": "0.05",
         "metrics.test..auroc": 0.8, "metrics.test..auroc_darkest": 0.7,
         "metrics.test..brightness_spearman_normal": 0.1, "metrics.test..r2_zy": 0.9, "metrics.test..r2_zx": 0.2},
        {"run_id": "r2", "tags.mlflow.runName": "b", "start_time": pd.Timestamp("2026-01-02"),
         "params.model.name": "vae", "params.model.zx_dim": "24", "params.data.train_anomaly_ratio": "0.05",
         "metrics.test..auroc": float("nan")},  # trained, never evaluated
    ])
    table = sweep_table.gather_table(sweep_table.rows_from_mlflow(runs))
    assert len(table) == 1 and table.loc[0, "model"] == "danvae" and table.loc[0, "zx_dim"] == 24
    assert table.loc[0, "ratio"] == 0.05 and table.loc[0, "auroc"] == 0.8


def test_gather_falls_back_to_mlflow_when_dvc_experiments_carry_no_metrics(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sweep, "exp_show", lambda repo, all_commits=False: show(
        exp_rev("x", "danvae", 24, 0.05, metrics=None)))
    runs = pd.DataFrame([{"run_id": "r", "params.model.name": "vae", "params.model.zx_dim": "8",
                          "params.data.train_anomaly_ratio": "0.1", "metrics.test.auroc": 0.6}])
    monkeypatch.setattr(sweep, "mlflow_runs", lambda repo: runs)
    rows, used = sweep.collect_rows(tmp_path)
    assert used == "mlflow" and rows[0]["model.name"] == "vae"
    assert "git-ignored" in capsys.readouterr().err
    assert sweep.collect_rows(tmp_path, source="dvc") == ([], "dvc")


def test_failed_tasks_parses_dvc_queue_status():
    text = ("Task     Name        Created    Status\n7c48c12  randy-sups  02:51 PM   Failed\n"
            "24c49c4  fifty-gear  02:51 PM   Success\n\nWorker status: 0 active, 0 idle\n")
    assert sweep.failed_tasks(text) == {"7c48c12"}


# ---- a real sweep -----------------------------------------------------------------------


def let_git_track_metrics(repo) -> None:
    """DVC puts an experiment's `cache: false` metrics into its commit only if git may track
    them; drop any ignore lines that would hide such files (a no-op with the project's cached outputs)."""
    path = repo.path / ".gitignore"
    hidden = {"/reports/", "reports/", "/models/train_metrics.json", "/models/run.json"}
    path.write_text("".join(line for line in path.read_text().splitlines(keepends=True) if line.strip() not in hidden))
    repo.run("git", "add", ".gitignore")
    repo.run("git", "commit", "-qm", "track metrics", check=False)


@pytest.mark.slow
def test_a_tiny_sweep_queues_runs_and_gathers(tmp_path):
    repo = make_repo(tmp_path)
    let_git_track_metrics(repo)
    py = sys.executable

    dry = repo.run(py, "-m", "pipelines.sweep", "queue", "--models", "vae,danvae", "--zx", "8",
                   "--ratios", "0.05,0.1", "--dry-run").stdout
    assert dry.count("model.name=vae") == 1 and dry.count("model.name=danvae") == 2

    queued = repo.run(py, "-m", "pipelines.sweep", "queue", "--models", "vae,danvae", "--zx", "8", "--ratios", "0.1")
    assert "queued 2 experiments" in queued.stdout
    repo.run(py, "-m", "pipelines.sweep", "run")

    out = repo.run(py, "-m", "pipelines.sweep", "gather", "--out", "reports/sweep").stdout
    assert "(from dvc)" in out
    table = pd.read_csv(repo.path / "reports/sweep/sweep.csv")
    assert list(table.columns) == sweep_table.TABLE_COLUMNS
    assert list(zip(table["model"], table["zx_dim"], table["ratio"])) == [("vae", 8, 0.1), ("danvae", 8, 0.1)]
    for col in ("auroc", "auroc_darkest"):
        assert table[col].between(0, 1).all()
    assert table["brightness_spearman"].between(-1, 1).all()
    assert table["r2_zx"].le(1).all()
    assert math.isnan(table.loc[0, "r2_zy"]) and table.loc[1, "r2_zy"] <= 1  # vae has no z_y
    md = (repo.path / "reports/sweep/sweep.md").read_text()
    assert md.count("\n| vae | 8 | 0.10* |") == 1 and "| danvae | 8 | 0.10 |" in md

    # The MLflow runs of the queued experiments landed in the project's mlflow.db, not in
    # DVC's temporary copies, and tell the same story.
    via_mlflow = repo.run(py, "-m", "pipelines.sweep", "gather", "--source", "mlflow", "--out", "reports/sweep-ml")
    assert "(from mlflow)" in via_mlflow.stdout
    other = pd.read_csv(repo.path / "reports/sweep-ml/sweep.csv")
    pd.testing.assert_frame_equal(table.drop(columns="experiment"), other.drop(columns="experiment"), atol=1e-6)

    # Each experiment registered a version under the sweep's own alias; none became the challenger.
    from mlflow import MlflowClient

    store = f"sqlite:///{repo.path / 'mlflow.db'}"
    registered = MlflowClient(tracking_uri=store, registry_uri=store).get_registered_model("danvae-surface")
    assert set(registered.aliases) == {"sweep"}, registered.aliases
