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


def test_a_killed_server_restarts_on_the_same_database_and_loses_nothing(tmp_path):
    """kill -9 of the Prefect server: ``start`` again brings it back on the same database with
    the deployments, the pools, the concurrency limit and a flow run scheduled before the
    crash, and replaces the orphaned workers rather than adding to them."""
    import os
    import signal
    import time
    from datetime import UTC, datetime, timedelta

    from tests.orchestration.conftest import _free_port, new_repo
    from tests.pipeline.conftest import tool_env

    repo = new_repo(tmp_path / "repo")
    env = tool_env()
    for key in ("PREFECT_API_URL", "PREFECT_HOME", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    env.update(PREFECT_WORKER_QUERY_SECONDS="1", PYTHONUNBUFFERED="1")
    schedule = [sys.executable, "-m", "pipelines.schedule", "--project-dir", str(repo.path)]
    run = lambda *a: subprocess.run(schedule + list(a), cwd=repo.path, env=env, capture_output=True,  # noqa: E731
                                    text=True, timeout=400)
    port = _free_port()
    try:
        first = run("start", "--port", str(port), "--no-ui", "--no-gpu-worker")
        assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
        state = json.loads((repo.path / ".prefect" / "schedule.json").read_text())
        api = {**env, "PREFECT_API_URL": state["server"]["api_url"], "PREFECT_HOME": state["prefect_home"]}
        scheduled = subprocess.run(
            [sys.executable, "-c", _SCHEDULE_ONE, (datetime.now(UTC) + timedelta(days=30)).isoformat()],
            cwd=repo.path, env=api, capture_output=True, text=True, timeout=120)
        assert scheduled.returncode == 0, scheduled.stderr[-2000:]
        flow_run_id = scheduled.stdout.strip()

        os.kill(state["server"]["pid"], signal.SIGKILL)
        old_worker = state["workers"][0]["pid"]
        for _ in range(100):
            if not Path(f"/proc/{state['server']['pid']}").exists():
                break
            time.sleep(0.1)

        second = run("start", "--port", str(port), "--no-ui", "--no-gpu-worker")
        assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
        assert "is gone; stopping what is left of it" in second.stdout
        assert not Path(f"/proc/{old_worker}").exists() or b"prefect" not in Path(
            f"/proc/{old_worker}/cmdline").read_bytes(), "the orphaned worker was left running"
        found = subprocess.run([sys.executable, "-c", _READ_BACK, flow_run_id], cwd=repo.path, env=api,
                               capture_output=True, text=True, timeout=120)
        assert found.returncode == 0, found.stderr[-2000:]
        facts = json.loads(found.stdout)
        assert facts["flow_run_state"] == "SCHEDULED"
        assert {"retrain/scheduled"} <= set(facts["deployments"])
        assert facts["limit"] == 1 and "cpu" in facts["pools"]
        assert len(facts["cpu_workers_online"]) >= 1
    finally:
        stopped = run("stop")
        assert stopped.returncode == 0


_SCHEDULE_ONE = """
import sys
from datetime import datetime
from prefect.client.orchestration import get_client
from prefect.states import Scheduled
with get_client(sync_client=True) as c:
    d = c.read_deployment_by_name("retrain/scheduled")
    fr = c.create_flow_run_from_deployment(d.id, state=Scheduled(scheduled_time=datetime.fromisoformat(sys.argv[1])))
    print(fr.id)
"""

_READ_BACK = """
import json, sys
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as c:
    fr = c.read_flow_run(sys.argv[1])
    deployments = [f"{c.read_flow(d.flow_id).name}/{d.name}" for d in c.read_deployments()]
    print(json.dumps({"flow_run_state": fr.state.type.value, "deployments": deployments,
                      "limit": c.read_global_concurrency_limit_by_name("danvae-retrain").limit,
                      "pools": [p.name for p in c.read_work_pools()],
                      "cpu_workers_online": [w.name for w in c.read_workers_for_work_pool("cpu")
                                             if str(w.status).upper().endswith("ONLINE")]}))
"""


def test_a_port_is_free_unless_someone_listens_on_it():
    import socket

    from pipelines.schedule import port_free

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds its server socket
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert not port_free(port)
        with socket.create_connection(("127.0.0.1", port)) as client, s.accept()[0] as conn:
            conn.close()  # the server side closes first: its end of the connection lingers (TIME_WAIT)
            client.recv(1)
    assert port_free(port), "a connection left in TIME_WAIT does not make the port busy"
