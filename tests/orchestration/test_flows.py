"""The pipeline and retrain flows against a real Prefect server, on a tiny copy of the project.

One module repo: the pipeline runs once (all five stages, a registered model), then retrain with
nothing new (registry untouched), then with new generated images under a gate set to pass (a new
version, and the champion moves to it), then a dark batch that fails validation (no retries, no new version).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipelines.flows import NO_NEW_IMAGES, STAGES, pipeline, retrain
from tests.orchestration.conftest import add_incoming, champion, mlflow_at, new_repo, versions

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(prefect_server, tmp_path_factory):
    repo = new_repo(tmp_path_factory.mktemp("flows") / "repo")
    with mlflow_at(repo):
        state = pipeline(project_dir=str(repo.path), return_state=True)
    return repo, state.result(), state.state_details.flow_run_id


def stage_task_runs(flow_run_id) -> dict:
    """The flow run's stage task runs, by name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: r for r in runs if r.name in STAGES}


def test_pipeline_runs_all_five_stages_and_registers_a_model(trained, prefect_server):
    repo, result, flow_run_id = trained
    stages = result["stages"]
    assert list(stages) == list(STAGES)
    assert all(s["ran"] and not s["skipped"] for s in stages.values()), stages
    assert (repo.path / "dvc.lock").exists() and (repo.path / "models/detector/detector.pt").exists()
    status = repo.dvc("status").stdout.lower()
    assert "up to date" in status  # the stages went through DVC: dvc.lock matches the workspace
    assert 0.0 <= result["metrics"]["auroc"] <= 1.0
    promotion = result["promotion"]
    assert promotion["registered_model"] == "danvae-surface"
    assert versions(repo) == [int(promotion["version"])]
    assert (champion(repo) == int(promotion["version"])) is bool(promotion["promoted"])
    # the run is on the server, with its metrics artifact
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["danvae-metrics"])))
    assert arts and "auroc" in arts[0].data and "| train | ran" in arts[0].data
    # the run graph shows the pipeline: each stage task waits for the one before it
    runs = stage_task_runs(flow_run_id)
    assert sorted(runs) == sorted(STAGES) and all(r.state.name == "Completed" for r in runs.values())
    for before, after in zip(STAGES, STAGES[1:]):
        upstream = {i.id for i in runs[after].task_inputs.get("wait_for", [])}
        assert upstream == {runs[before].id}, (after, runs[after].task_inputs)
    said = {"promoted": "promoted to champion", "rejected": "rejected by the gate (no champion yet)"}
    assert result["message"].endswith(f"v{promotion['version']} {said[promotion['decision']]}"), result["message"]


def test_pipeline_again_reports_stages_dvc_skipped(trained):
    repo, *_ = trained
    lock = (repo.path / "dvc.lock").read_text()
    with mlflow_at(repo):
        state = pipeline(project_dir=str(repo.path), return_state=True)
    again = state.result()
    assert all(s["skipped"] and not s["ran"] for s in again["stages"].values()), again["stages"]
    runs = stage_task_runs(state.state_details.flow_run_id)  # a skipped stage is shown as such
    assert {name: r.state.name for name, r in runs.items()} == {name: "Skipped" for name in STAGES}
    # the same version again: said as what the gate decided, never "promoted" a second time
    said = {"unchanged": "already the champion", "rejected": "rejected by the gate (no champion yet)"}
    assert again["message"].endswith(said[again["promotion"]["decision"]]), again["message"]
    assert "up to date, skipped by DVC" in again["stages"]["train"]["message"]
    assert (repo.path / "dvc.lock").read_text() == lock
    assert len(versions(repo)) == 1  # registering the same model again adds no version


def test_retrain_without_new_images_changes_nothing(trained):
    repo, *_ = trained
    before = (versions(repo), champion(repo), (repo.path / "dvc.lock").read_text(),
              (repo.path / "data/manifest.parquet").stat().st_mtime_ns)
    with mlflow_at(repo):
        state = retrain(project_dir=str(repo.path), return_state=True)
    assert state.is_completed() and state.message == NO_NEW_IMAGES
    assert state.result()["status"] == NO_NEW_IMAGES
    after = (versions(repo), champion(repo), (repo.path / "dvc.lock").read_text(),
             (repo.path / "data/manifest.parquet").stat().st_mtime_ns)
    assert after == before


def _gate_params(repo, dest: Path, promote: dict) -> str:
    """The repo's params.yaml with other promotion-gate settings, outside the repo (the flow reads the
    gate from ``params_path``; the DVC stages keep reading params.yaml)."""
    params = yaml.safe_load((repo.path / "params.yaml").read_text())
    params["promote"] = {**params["promote"], **promote}
    dest.write_text(yaml.safe_dump(params, sort_keys=False))
    return str(dest)


def test_retrain_with_new_images_registers_a_new_version_and_gates_champion(trained):
    """New images: a new version, judged by the gate against the old champion. The gate is set so
    that any computable AUROC passes (tolerances 1, floor 0), so the champion must move to it; a
    gate that refused, or an alias left behind, fails here (refusals: tests/mlflow, tests/code)."""
    repo, *_ = trained
    old_versions, old_champion = versions(repo), champion(repo)
    gate = _gate_params(repo, repo.path.parent / "lenient-gate.yaml",
                        {"auroc_tolerance": 1.0, "dark_tolerance": 1.0, "min_auroc": 0.0})
    add_incoming(repo, seed=101)
    with mlflow_at(repo):
        out = retrain(project_dir=str(repo.path), params_path=gate)
    assert out["status"] == "retrained" and out["new_images"] == 48
    stages = out["pipeline"]["stages"]
    assert stages["ingest"]["ran"] and stages["train"]["ran"]
    promotion = out["pipeline"]["promotion"]
    new = int(promotion["version"])
    assert versions(repo) == old_versions + [new]
    assert promotion["challenger_metrics"]["auroc"] is not None, promotion
    assert (promotion["champion_version"] is None) is (old_champion is None)
    assert promotion["promoted"] and promotion["decision"] == "promoted", promotion
    assert champion(repo) == new != old_champion
    judged_by = "first champion" if old_champion is None else f"vs champion v{old_champion}'s"
    assert judged_by in promotion["reason"], promotion
    # the images are in the manifest now: nothing new for the next run
    with mlflow_at(repo):
        assert retrain(project_dir=str(repo.path))["status"] == NO_NEW_IMAGES


def test_a_failed_validation_is_not_retried_and_registers_nothing(trained):
    repo, *_ = trained
    before = versions(repo)
    rng = np.random.default_rng(0)
    incoming = repo.path / "data/incoming/normal"
    for i in range(40):  # a camera whose lights failed
        Image.fromarray(rng.integers(0, 25, (32, 32, 3), dtype=np.uint8)).save(incoming / f"dark_{i}.png")
    with mlflow_at(repo):
        state = retrain(project_dir=str(repo.path), return_state=True)
    assert state.is_failed()
    assert "validate: FAILED" in state.message
    assert versions(repo) == before
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=["validate"])))
    failed = [r for r in runs if r.state and r.state.is_failed()]
    assert failed and all(r.run_count == 1 for r in failed)  # no retries for a refused data set
    assert json.loads((repo.path / "reports/validation.json").read_text())["success"] is False
