"""The DVC pipeline end to end, for real: dvc repro on tiny params in a copy of the repo."""
from __future__ import annotations

import json
import re
import sys

import numpy as np
import pandas as pd
import torch
from PIL import Image

STAGES = ("ingest", "validate", "train", "score", "evaluate")


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", output))


def test_repro_runs_everything_then_nothing_then_only_downstream(tiny_repo):
    first = tiny_repo.dvc("repro")
    assert ran(first.stdout) == set(STAGES)
    metrics = json.loads((tiny_repo.path / "reports/metrics.json").read_text())
    assert 0.0 <= metrics["auroc"] <= 1.0
    assert (tiny_repo.path / "models/detector/detector.pt").exists()
    assert (tiny_repo.path / "data/manifest.parquet").exists()
    # `dvc metrics show` prints one row of headline figures that fits a wide terminal; the rest is in metrics_full
    shown = tiny_repo.dvc("metrics", "show").stdout
    rows = [line for line in shown.splitlines() if line.strip()]
    assert len(rows) == 2 and rows[1].startswith("reports/metrics.json"), shown
    assert "auroc_darkest" in rows[0] and max(map(len, rows)) <= 250, shown
    full = json.loads((tiny_repo.path / "reports/metrics_full.json").read_text())
    assert len(full["auroc_by_brightness"]) == 5 and full["auroc"] == metrics["auroc"]
    # each plot drawn once (no stage-level duplicate with the default template), the PNG figures as images
    plots = json.loads(tiny_repo.dvc("plots", "show", "--json").stdout)["data"]
    drawn = {name: {r["type"] for r in renders} for name, renders in plots.items()}
    assert {n for n, t in drawn.items() if t == {"vega"}} == {
        "ROC", "Precision-recall", "AUROC per brightness quintile (0 = darkest)", "Score vs brightness (normal images)"}
    images = {n for n, t in drawn.items() if t == {"image"}}
    assert "reports/figures/roc.png" in images and "reports/figures/heatmaps.png" in images
    assert set(drawn) == images | {n for n, t in drawn.items() if t == {"vega"}}
    assert metrics["auroc_low"] <= metrics["auroc"] <= metrics["auroc_high"]
    # the HTML page renders offline: vega, vega-lite and vega-embed inlined, nothing fetched
    tiny_repo.dvc("plots", "show")
    page = (tiny_repo.path / "dvc_plots" / "index.html").read_text()
    assert "vegaEmbed('#" in page and "cdn.jsdelivr" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # no script, style or image from a server

    # what `make run` does after the repro: the gate, then the summary
    summary = tiny_repo.run(sys.executable, "-m", "pipelines.summary").stdout
    decision = json.loads((tiny_repo.path / "reports/promotion.json").read_text())
    assert decision["decision"] in ("promoted", "rejected") and decision["version"] == "1"
    assert f"danvae-surface v1: {decision['decision']}" in summary and "image AUROC" in summary
    assert ("WARNING" in summary) == (metrics["auroc_low"] <= 0.5)

    # the MLflow run is named after what it trained and lists the manifest as its dataset input
    from mlflow import MlflowClient

    store = f"sqlite:///{tiny_repo.path / 'mlflow.db'}"
    record = json.loads((tiny_repo.path / "models/run.json").read_text())
    assert record["tracking_uri"] == "sqlite:///mlflow.db"  # run.json travels (DVC remote): no machine's folders in it
    run = MlflowClient(tracking_uri=store, registry_uri=store).get_run(record["run_id"])
    commit = tiny_repo.run("git", "rev-parse", "--short=7", "HEAD").stdout.strip()
    assert run.info.run_name == f"danvae-zx8-r0.1-{commit}", run.info.run_name
    # every output is git-ignored (in DVC's cache): git sees the run's record, dvc.lock, and nothing else
    assert tiny_repo.run("git", "status", "--porcelain").stdout.splitlines() == ["?? dvc.lock"]
    assert run.data.tags["git_dirty"] == "false"
    card = MlflowClient(tracking_uri=store, registry_uri=store).get_model_version("danvae-surface", "1").description
    assert f"manifest md5 `{record['data_version']}`" in card and f"test AUROC {metrics['auroc']:.3f}" in card
    assert f"**Gate**: {decision['decision']}: " in card and "Known limits" in card
    [dataset] = run.inputs.dataset_inputs
    assert dataset.dataset.name == "manifest" and dataset.dataset.digest == run.data.tags["data_version"]
    assert {t.key: t.value for t in dataset.tags}["mlflow.data.context"] == "training"

    # the validation as Great Expectations Data Docs: a page naming every expectation, linked and logged
    validation = json.loads((tiny_repo.path / "reports/validation.json").read_text())
    page = tiny_repo.path / validation["data_docs"]
    assert validation["data_docs"].startswith("gx/uncommitted/data_docs/local_site/validations/") and page.is_file()
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.read_text()))
    n_expectations = len(validation["gx_result"]["results"])
    assert n_expectations >= 20 and f"Evaluated Expectations {n_expectations}" in text
    for result in validation["gx_result"]["results"]:
        column = result["expectation_config"]["kwargs"].get("column")
        assert column is None or column in text, column
    assert (tiny_repo.path / "gx/uncommitted/data_docs/local_site/index.html").is_file()
    assert "](../gx/uncommitted/data_docs/local_site/validations/" in (tiny_repo.path / "reports/report.md").read_text()
    logged = MlflowClient(tracking_uri=store, registry_uri=store).list_artifacts(record["run_id"], "data_docs")
    assert [a.path for a in logged] == [f"data_docs/{page.name}"]
    assert "gx/" not in tiny_repo.run("git", "status", "--porcelain").stdout  # the GX context is git-ignored

    again = tiny_repo.dvc("repro")
    assert ran(again.stdout) == set()
    assert "up to date" in again.stdout.lower()

    # the nuisance factor becomes the generator's recorded lighting (nuisance.csv), not the measured brightness
    tiny_repo.set_params({"train": {"epochs": 3}, "data": {"nuisance": "lighting"}})
    third = tiny_repo.dvc("repro")
    assert ran(third.stdout) == {"train", "score", "evaluate"}
    rerun = json.loads((tiny_repo.path / "models/run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    assert client.get_run(rerun).data.tags["git_dirty"] == "true"  # params.yaml changed and not committed
    truth = pd.read_csv(tiny_repo.path / "data/raw/synthetic/ground_truth.csv")
    lighting = dict(zip("data/raw/synthetic/" + truth["file"], truth["lighting"]))
    scored = pd.read_csv(tiny_repo.path / "reports/scores.csv")
    np.testing.assert_allclose(scored["nuisance"], [lighting[p] for p in scored["path"]])
    full = json.loads((tiny_repo.path / "reports/metrics_full.json").read_text())
    assert len(full["auroc_by_nuisance"]) == 5 and "nuisance_spearman_normal" in full
    assert "## Per lighting quintile" in (tiny_repo.path / "reports/report.md").read_text()
    assert '"nuisance": "lighting"' in (tiny_repo.path / "models/detector/detector.json").read_text()
    gate = tiny_repo.run(sys.executable, "-m", "pipelines.summary").stdout  # the gate scores with the factor too
    assert json.loads((tiny_repo.path / "reports/promotion.json").read_text())["version"] == "2", gate

    # the score stage on a Dask LocalCluster writes the very same table and heatmaps
    before = (tiny_repo.path / "reports/scores.csv").read_bytes()
    maps = np.load(tiny_repo.path / "reports/heatmaps.npz")["heatmaps"]
    tiny_repo.set_params({"dask": {"workers": 2}})
    assert ran(tiny_repo.dvc("repro").stdout) == set()  # where it scores is not a DVC param: nothing reruns
    on_dask = tiny_repo.dvc("repro", "--force", "--single-item", "score")
    assert "on Dask (2 local workers)" in on_dask.stdout
    assert (tiny_repo.path / "reports/scores.csv").read_bytes() == before
    assert np.array_equal(np.load(tiny_repo.path / "reports/heatmaps.npz")["heatmaps"], maps)
    tiny_repo.set_params({"dask": {"workers": 1}})

    # a train stage that fails on what a rerun would repeat: one line, and the last good run's record kept
    if not torch.cuda.is_available():
        records = {n: (tiny_repo.path / "models" / n).read_text() for n in ("run.json", "train_metrics.json")}
        tiny_repo.set_params({"train": {"device": "cuda"}})
        failed = tiny_repo.dvc("repro", check=False)
        assert failed.returncode != 0 and "train: error:" in failed.stderr and "Traceback" not in failed.stderr
        assert {n: (tiny_repo.path / "models" / n).read_text() for n in records} == records


def test_a_changed_source_reruns_everything_and_a_dark_batch_fails_validation(tiny_repo):
    tiny_repo.dvc("repro")  # one full run shared by the checks below (each used to start its own)
    # a change to the image decoding (not a DVC param) makes every stage that decodes images stale
    images_py = tiny_repo.path / "danvae" / "images.py"
    code = images_py.read_text()
    images_py.write_text(code + "\n# changed\n")
    stale = json.loads(tiny_repo.dvc("status", "--json").stdout)
    assert {"ingest", "train", "score", "evaluate"} <= set(stale), stale
    images_py.write_text(code)
    assert "train" not in json.loads(tiny_repo.dvc("status", "--json").stdout)
    tiny_repo.set_params({"data": {"sources": [{"type": "synthetic", "name": "synthetic", "n_normal": 100,
                                                "n_anomaly": 36, "size": 32, "difficulty": "easy", "seed": 0}]}})
    assert ran(tiny_repo.dvc("repro").stdout) == set(STAGES)

    rng = np.random.default_rng(0)
    incoming = tiny_repo.path / "data/incoming"
    for i in range(40):  # a camera whose lights failed: every new image nearly black
        Image.fromarray(rng.integers(0, 25, (32, 32, 3), dtype=np.uint8)).save(incoming / f"dark_{i}.png")
    out = tiny_repo.dvc("repro", check=False)
    assert out.returncode != 0
    assert "validate: FAILED" in out.stderr and "KS" in out.stderr
    assert "Running stage 'train'" not in out.stdout


def test_bad_params_stop_with_the_key_named(tiny_repo):
    tiny_repo.set_params({"model": {"name": "transformer"}})
    out = tiny_repo.dvc("repro", check=False)
    assert out.returncode != 0
    assert "model.name" in out.stderr and "danvae" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_train_stage_killed_under_dvc_repro_resumes_and_a_params_change_restarts(tiny_repo):
    import os
    import signal
    import subprocess
    import time

    tiny_repo.set_params({"train": {"epochs": 12}})
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=tiny_repo.path, env=tiny_repo.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    checkpoints = tiny_repo.path / ".cache" / "checkpoints"
    while not list(checkpoints.glob("*/checkpoints/last.pt")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "dvc repro ended before the first training checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    resumed = tiny_repo.dvc("repro")
    assert {"train", "score", "evaluate"} <= ran(resumed.stdout)
    found = re.search(r"resumed from epoch (\d+)", resumed.stdout + resumed.stderr)
    assert found and 2 <= int(found.group(1)) <= 12, resumed.stdout[-2000:]
    assert json.loads((tiny_repo.path / "models/train_metrics.json").read_text())["epochs"] == 12

    tiny_repo.set_params({"train": {"lr": 0.0005}})
    restarted = tiny_repo.dvc("repro")
    assert "train" in ran(restarted.stdout) and "resumed from epoch" not in restarted.stdout + restarted.stderr


def test_the_train_stage_runs_as_two_ddp_processes(tiny_repo):
    tiny_repo.set_params({"train": {"nproc": 2}})
    done = tiny_repo.dvc("repro")
    assert ran(done.stdout) == set(STAGES)
    assert "in 2 processes" in done.stdout
    record = json.loads((tiny_repo.path / "models/run.json").read_text())
    assert record["registered_version"] == "1"  # rank 0 alone tracked and registered: one run, one version
    from mlflow import MlflowClient

    store = f"sqlite:///{tiny_repo.path / 'mlflow.db'}"
    runs = MlflowClient(tracking_uri=store).search_runs([record["experiment_id"]])
    assert len(runs) == 1 and runs[0].data.params["train.nproc"] == "2"
    assert 0.0 <= json.loads((tiny_repo.path / "reports/metrics.json").read_text())["auroc"] <= 1.0
