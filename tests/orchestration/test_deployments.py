"""Deployments from prefect.yaml executed by real process workers.

One scenario (module fixture), three tests: a tiny project with ``orchestration.train_pool: gpu`` is
deployed (``python -m pipelines.schedule deploy``), new images are dropped into data/incoming and
two runs of ``retrain/scheduled`` are triggered together; the ``cpu`` worker runs both, and the one
that trains sends the train stage to the ``gpu`` pool, where the gpu worker runs ``train-stage/gpu``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from pipelines.flows import NO_NEW_IMAGES, RETRAIN_LIMIT
from tests.orchestration.conftest import CRON, add_incoming, deploy, new_repo, versions

pytestmark = pytest.mark.slow


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _wait_final(ids, timeout_s: float = 420):
    deadline = time.monotonic() + timeout_s
    with _client() as client:
        while True:
            runs = [client.read_flow_run(i) for i in ids]
            if all(r.state and r.state.is_final() for r in runs):
                return runs
            if time.monotonic() > deadline:
                raise TimeoutError([(r.name, r.state and r.state.name) for r in runs])
            time.sleep(1)


def _logs(flow_run_id) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with _client() as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)
    return "\n".join(log.message for log in logs)


def _task_runs(flow_run_ids, name: str):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterName

    with _client() as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(flow_run_ids))),
                                     task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[name])))


def _subflow_runs(flow_run_id):
    """Flow runs started from inside ``flow_run_id`` (its pipeline subflow, a train-stage deployment run)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with _client() as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
        out = list(children)
        for child in children:
            out += client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[child.id])))
    return out


@dataclass
class Scenario:
    repo: object
    deploy_output: str
    runs: list


@pytest.fixture(scope="module")
def two_retrains(workers, tmp_path_factory) -> Scenario:
    from prefect.deployments import run_deployment

    from prefect.concurrency.sync import concurrency

    repo = new_repo(tmp_path_factory.mktemp("deployments") / "repo", {"orchestration": {"train_pool": "gpu"}})
    out = deploy(repo, workers)
    add_incoming(repo, seed=7)
    # Both runs must arrive while a retrain is running, however the worker staggers their start:
    # this test holds the retrain slot ("a retrain already running") until both have seen the new
    # images and are waiting for it; then lets go.
    with concurrency(RETRAIN_LIMIT, timeout_seconds=30, strict=True):
        a = run_deployment("retrain/scheduled", timeout=0, as_subflow=False)
        b = run_deployment("retrain/scheduled", timeout=0, as_subflow=False)
        deadline = time.monotonic() + 180
        while not all("waiting" in _logs(r.id) for r in (a, b)):
            assert time.monotonic() < deadline, "the two retrain runs never both waited for the slot"
            time.sleep(1)
    return Scenario(repo, out, _wait_final([a.id, b.id]))


def test_deployments_come_from_prefect_yaml_with_the_checkout_and_the_cron(two_retrains):
    out = two_retrains.deploy_output
    assert "retrain/scheduled" in out and "train-stage/gpu" in out and "pipeline/on-demand" in out
    with _client() as client:
        retrain_dep = client.read_deployment_by_name("retrain/scheduled")
        gpu_dep = client.read_deployment_by_name("train-stage/gpu")
    assert retrain_dep.schedules and retrain_dep.schedules[0].schedule.cron == CRON  # orchestration.retrain_cron
    assert gpu_dep.work_pool_name == "gpu" and retrain_dep.work_pool_name == "cpu"
    step = gpu_dep.pull_steps[0]["prefect.deployments.steps.set_working_directory"]
    assert step["directory"] == str(two_retrains.repo.path)


def test_the_train_stage_runs_on_the_gpu_pool_through_its_worker(two_retrains, workers):
    runs = two_retrains.runs
    assert all(r.state.is_completed() for r in runs), [(r.name, r.state.name, r.state.message) for r in runs]
    trainer = next(r for r in runs if NO_NEW_IMAGES not in r.state.message)
    gpu_runs = [r for r in _subflow_runs(trainer.id) if r.work_pool_name == "gpu"]
    assert len(gpu_runs) == 1, _subflow_runs(trainer.id)
    run = gpu_runs[0]
    assert run.state.is_completed() and run.state.message.startswith("train: ran"), run.state
    with _client() as client:
        assert client.read_deployment(run.deployment_id).name == "gpu"
    assert run.infrastructure_pid  # set by the process worker that launched it
    _, log, name = workers.workers["gpu"]
    assert f"Worker '{name}' submitting flow run '{run.id}'" in log.read_text()
    assert str(two_retrains.repo.path) in _logs(run.id)  # it ran in this checkout (pull step)
    assert (two_retrains.repo.path / "models/detector/detector.pt").exists()
    assert len(versions(two_retrains.repo)) == 1  # the pipeline went on to register the model


def test_two_retrain_runs_triggered_together_do_not_train_concurrently(two_retrains):
    runs = two_retrains.runs
    assert all(r.state.is_completed() for r in runs), [(r.name, r.state.name, r.state.message) for r in runs]
    waiter = [r for r in runs if NO_NEW_IMAGES in r.state.message]
    trainer = [r for r in runs if NO_NEW_IMAGES not in r.state.message]
    assert len(trainer) == 1 and len(waiter) == 1, [r.state.message for r in runs]
    trainer, waiter = trainer[0], waiter[0]
    assert "waited" in waiter.state.message, waiter.state.message  # then found the images taken in
    assert "new images" in trainer.state.message and "waiting" in _logs(trainer.id)
    # one train stage in all (run by the gpu worker for the trainer); the waiter got the slot only after it
    trains = _task_runs([r.id for r in _subflow_runs(trainer.id)] + [waiter.id], "train")
    assert len(trains) == 1 and trains[0].state.is_completed(), trains
    assert not _subflow_runs(waiter.id)  # it never started a pipeline
    assert waiter.end_time > trains[0].end_time
    assert len(versions(two_retrains.repo)) == 1
