"""The train stage sent to a Prefect work pool (a worker on a GPU host runs the ``train-stage``
deployment) while the pipeline flow waits for it."""
from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipelines.dvc_runner import StageFailed

TRAIN_FLOW = "train-stage"


def check_pool_reachable(pool: str) -> None:
    """A work pool needs a real server that workers poll; Prefect's temporary local API has none."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise StageFailed("train", f"orchestration.train_pool is {pool!r} but no Prefect server is configured "
                          "(PREFECT_API_URL): start one (python -m pipelines.schedule start) or set "
                          "orchestration.train_pool: null", retriable=False)


@task(name="train-on-pool", cache_policy=NO_CACHE, persist_result=False)
def train_on_pool(pool: str, project_dir: str, params_path: str, timeout_s: float) -> dict[str, Any]:
    """Run ``train-stage/<pool>`` (a worker on that pool executes it) and wait for it."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    logger = get_run_logger()
    name = f"{TRAIN_FLOW}/{pool}"
    check_pool_reachable(pool)
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise StageFailed("train", f"no deployment {name!r} on the server: deploy with "
                              "`python -m pipelines.schedule deploy`", retriable=False) from None
        try:
            online = [w.name for w in client.read_workers_for_work_pool(pool) if str(w.status).endswith("ONLINE")]
        except Exception:  # noqa: BLE001 — informational only
            online = []
    if online:
        logger.info("sending the train stage to work pool %r (workers online: %s)", pool, ", ".join(online))
    else:
        logger.warning("no worker is polling work pool %r right now; the train run waits for one "
                       "(`prefect worker start --pool %s`), at most %g s", pool, pool, timeout_s)
    start = time.monotonic()
    run = run_deployment(name=name, parameters={"project_dir": project_dir, "params_path": params_path},
                         timeout=timeout_s, poll_interval=2)
    state = run.state
    where = f"flow run {run.name!r} ({run.id}) on pool {run.work_pool_name or pool!r}"
    if state is None or not state.is_final():
        with get_client(sync_client=True) as client:
            from prefect.states import Cancelling

            client.set_flow_run_state(run.id, Cancelling(message="the pipeline stopped waiting for it"), force=True)
        raise StageFailed("train", f"train: {where} did not finish within {timeout_s:g} s "
                          f"(state {state.name if state else 'unknown'}); is a worker running on pool {pool!r}?",
                          retriable=False)
    if not state.is_completed():
        raise StageFailed("train", f"train: {where} ended {state.name}: {state.message or ''}".strip(),
                          retriable=False)
    message = state.message or "train: done"
    logger.info("%s — %s (infrastructure %s)", where, message, run.infrastructure_pid)
    return {"stage": "train", "ran": "skipped" not in message, "skipped": "skipped" in message,
            "seconds": round(time.monotonic() - start, 1), "message": message, "pool": pool,
            "flow_run_id": str(run.id), "flow_run_name": run.name}
