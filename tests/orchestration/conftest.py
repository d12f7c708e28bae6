"""A real Prefect server on 127.0.0.1 with real process workers on the ``cpu`` and ``gpu`` pools
(one set per session, started and stopped by ``python -m pipelines.schedule``, PREFECT_HOME under
tmp), and tiny git+DVC copies of the project."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.pipeline.conftest import TINY, Repo, deep_update, make_repo, tool_env

MODEL = "danvae-surface"  # tracking.registered_model in params.yaml
CRON = "17 3 1 1 *"  # a schedule that never fires during a test session, and shows it comes from params
# tiny params; validation relaxed enough for the small batches these tests add
PARAMS = deep_update(deep_update({}, TINY), {"validate": {"min_per_split": 5, "drift_min_batch": 20},
                                             "orchestration": {"retrain_cron": CRON}})


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PrefectServer:
    api_url: str
    home: Path
    logs: Path
    env: dict[str, str]  # for subprocesses that talk to this server
    workers: dict[str, tuple] = field(default_factory=dict)  # pool -> (pid, log path, worker name)
    start_output: str = ""
    stop_output: str = ""


def _apply_env(values: dict[str, str | None]) -> dict[str, str | None]:
    """Set (or unset, for None) environment variables; return the previous values."""
    old = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    return old


def _drain_prefect_clients() -> None:
    """Send this process's queued logs and events before the server goes away."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        try:
            service.drain_all(timeout=10)
        except Exception:  # noqa: BLE001 — best effort at teardown
            pass


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> PrefectServer:
    """``python -m pipelines.schedule start`` in a tiny copy of the project: a real ``prefect server
    start --host 127.0.0.1`` (PREFECT_HOME under tmp), the pools, the deployments and one process
    worker per pool (cpu, gpu); ``python -m pipelines.schedule stop`` at the end of the session."""
    import json
    import subprocess

    home = tmp_path_factory.mktemp("prefect-home")
    repo = new_repo(tmp_path_factory.mktemp("schedule") / "repo")
    env = tool_env()
    env.update(PREFECT_HOME=str(home), PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90", PYTHONUNBUFFERED="1")
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "PROJECT_DIR"):
        env.pop(key, None)  # each project keeps its own sqlite registry
    schedule = [sys.executable, "-m", "pipelines.schedule", "--project-dir", str(repo.path)]
    port = _free_port()
    started = subprocess.run(schedule + ["start", "--port", str(port), "--no-ui"], cwd=repo.path, env=env,
                             capture_output=True, text=True, timeout=400)
    state_file = repo.path / ".prefect" / "schedule.json"
    if started.returncode != 0:
        subprocess.run(schedule + ["stop"], cwd=repo.path, env=env, capture_output=True, timeout=120)
        raise RuntimeError(f"schedule start failed:\n{started.stdout[-3000:]}\n{started.stderr[-3000:]}")
    state = json.loads(state_file.read_text())
    api_url = state["server"]["api_url"]
    server = PrefectServer(api_url, home, Path(state["server"]["log"]).parent, env={**env, "PREFECT_API_URL": api_url})
    for w in state["workers"]:
        log = Path(w["log"])
        name = next(ln.split("'")[1] for ln in log.read_text().splitlines() if "started!" in ln)
        server.workers[w["pool"]] = (w["pid"], log, name)
    server.start_output = started.stdout
    # this process is a client of the server too (flows called directly in the tests)
    old = _apply_env({"PREFECT_API_URL": api_url, "PREFECT_HOME": str(home)})
    import prefect.context

    prefect.context.refresh_global_settings_context()
    try:
        yield server
    finally:
        _drain_prefect_clients()
        stopped = subprocess.run(schedule + ["stop"], cwd=repo.path, env=env, capture_output=True, text=True,
                                 timeout=180)
        _apply_env(old)
        prefect.context.refresh_global_settings_context()
        server.stop_output = stopped.stdout + stopped.stderr
        pids = [state["server"]["pid"]] + [w["pid"] for w in state["workers"]]
        alive = [pid for pid in pids if _running(pid)]
        assert not alive and not state_file.exists(), (alive, server.stop_output)


def _running(pid: int) -> bool:
    try:
        return b"prefect" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.fixture(scope="session")
def workers(prefect_server) -> PrefectServer:
    """The process workers ``schedule start`` left polling the ``cpu`` and ``gpu`` pools."""
    assert set(prefect_server.workers) == {"cpu", "gpu"}
    return prefect_server


def new_repo(dest: Path, changes: dict | None = None) -> Repo:
    """A tiny git+DVC copy of the project (``tests.pipeline.conftest.make_repo``)."""
    dest.mkdir(parents=True, exist_ok=True)
    return make_repo(dest, deep_update(deep_update({}, PARAMS), changes or {}))


def deploy(repo: Repo, server: PrefectServer) -> str:
    """``python -m pipelines.schedule deploy`` from the repo: pools, concurrency limit, prefect.yaml."""
    env = dict(server.env)
    env["PATH"] = tool_env()["PATH"]
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "pipelines.schedule", "--project-dir", str(repo.path), "deploy"],
                          cwd=repo.path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@contextmanager
def mlflow_at(repo: Repo):
    """Flows called in this process register into the repo's own sqlite registry."""
    old = _apply_env({"MLFLOW_TRACKING_URI": f"sqlite:///{repo.path}/mlflow.db"})
    try:
        yield
    finally:
        _apply_env(old)


def registry(repo: Repo):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{repo.path}/mlflow.db")


def _registry_db(repo: Repo) -> Path:
    """The repo's sqlite registry file; a missing one is an error, not an empty registry (the
    flows under test always create it, so its absence means they wrote somewhere else)."""
    db = repo.path / "mlflow.db"
    if not db.is_file():
        raise FileNotFoundError(f"no MLflow registry at {db}")
    return db


def versions(repo: Repo, name: str = MODEL) -> list[int]:
    """Version numbers of ``name`` in the repo's registry ([] when the model is not registered);
    raises when the registry cannot be read."""
    _registry_db(repo)
    return sorted(int(v.version) for v in registry(repo).search_model_versions(f"name='{name}'"))


def champion(repo: Repo, name: str = MODEL) -> int | None:
    """The version behind ``name``'s ``champion`` alias (None when the model or the alias does not
    exist); raises when the registry cannot be read."""
    from mlflow.exceptions import MlflowException

    from danvae.mlops.registry import CHAMPION, is_missing

    _registry_db(repo)
    try:
        return int(registry(repo).get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException as exc:
        if is_missing(exc):
            return None
        raise


def add_incoming(repo: Repo, seed: int, n_normal: int = 40, n_anomaly: int = 8) -> Path:
    """Generated 32 px surfaces (labelled normal/ and anomaly/<defect>/) dropped into data/incoming
    (another seed overwrites the same file names with new content)."""
    from danvae.data.synthetic import generate_surfaces

    out = repo.path / "data" / "incoming"
    generate_surfaces(out, n_normal=n_normal, n_anomaly=n_anomaly, size=32, dark_share=0.15, seed=seed,
                      difficulty="easy")
    return out
