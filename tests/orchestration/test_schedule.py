"""``python -m pipelines.schedule start`` (run by the session fixture) left a server, the pools, the
deployments and the workers; ``stop`` (at the end of the session) is checked in the fixture."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_start_leaves_a_server_pools_deployments_and_a_worker_per_pool(prefect_server):
    out = prefect_server.start_output
    assert "server up in" in out and "deployed retrain/scheduled" in out
    assert "worker on pool 'cpu' started" in out and "worker on pool 'gpu' started" in out
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        pools = {p.name: p.type for p in client.read_work_pools()}
        limit = client.read_global_concurrency_limit_by_name("danvae-retrain")
        online = {pool: [w.name for w in client.read_workers_for_work_pool(pool)] for pool in ("cpu", "gpu")}
    assert pools.get("cpu") == "process" and pools.get("gpu") == "process"
    assert limit.limit == 1
    for pool, (_, _, name) in prefect_server.workers.items():
        assert name in online[pool]
    # the state file lives inside the project, and `status` reads it
    state_dir = Path(prefect_server.workers["gpu"][1]).parent.parent
    state = json.loads((state_dir / "schedule.json").read_text())
    assert state["server"]["api_url"] == prefect_server.api_url
    status = subprocess.run([sys.executable, "-m", "pipelines.schedule", "--project-dir", state["project_dir"],
                             "status"], cwd=state["project_dir"], env=prefect_server.env, capture_output=True,
                            text=True, timeout=60)
    assert status.returncode == 0 and "healthy" in status.stdout, status.stdout + status.stderr
