"""Start and stop the retraining schedule on this machine: a Prefect server, the deployments, workers.

    python -m pipelines.schedule start [--port 4200] [--no-gpu-worker] [--host 127.0.0.1]  # server, pools, deploy, workers
    python -m pipelines.schedule status
    python -m pipelines.schedule stop                                    # workers first, then the server
    python -m pipelines.schedule deploy                                  # (re)deploy prefect.yaml only

``start`` runs ``prefect server start --host 127.0.0.1 --port P`` with ``PREFECT_HOME`` in the
project (``.prefect/``), creates the process work pools ``cpu`` (the retrain and pipeline flows)
and ``gpu`` (the train stage), the ``danvae-retrain`` global concurrency limit (1 slot), deploys
``prefect.yaml`` (``PROJECT_DIR`` = this checkout, the cron = ``orchestration.retrain_cron``) and
starts one process worker per pool. Process ids, the API URL and log files go to
``.prefect/schedule.json``; logs to ``.prefect/logs/``. ``deploy`` talks to ``PREFECT_API_URL``
when it is set (a shared server), else to the server ``start`` left running.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from danvae.files import atomic_write
from pipelines import PROJECT_ROOT
from pipelines.env import PREFECT_STARTUP, tool_env

STATE_FILE = Path(".prefect/schedule.json")
LOG_DIR = Path(".prefect/logs")
POOLS = ("cpu", "gpu")
DEFAULT_PORT = 4200
SERVER_START_TIMEOUT_S = 120.0


def _prefect() -> list[str]:
    return [sys.executable, "-m", "prefect"]


def prefect_home(project: Path) -> Path:
    """``PREFECT_HOME`` as set by the caller, else ``<project>/.prefect``."""
    home = os.environ.get("PREFECT_HOME")
    if not home or Path(home) == PROJECT_ROOT / ".prefect":  # the default `import pipelines` sets
        return project / ".prefect"
    return Path(home)


def base_env(project: Path, api_url: str | None = None) -> dict[str, str]:
    """Environment for every Prefect process this module starts: state inside the project, offline."""
    env = tool_env(**PREFECT_STARTUP, PREFECT_HOME=str(prefect_home(project)), PYTHONUNBUFFERED="1",
                   PROJECT_DIR=str(project))
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def wait_healthy(api_url: str, timeout_s: float = SERVER_START_TIMEOUT_S, proc: subprocess.Popen | None = None) -> float:
    """Seconds until ``<api_url>/health`` answered; raise when it does not within ``timeout_s``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the Prefect server exited ({proc.returncode}) before answering")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{api_url}/health did not answer within {timeout_s:g} s")


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Nobody listens on ``port``. Connections of a server that just died (TIME_WAIT) do not
    count: the server binds with SO_REUSEADDR too."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _alive(pid: int) -> bool:
    """True when ``pid`` runs and is a Prefect process (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc (macOS): trust the pid
    return b"prefect" in cmdline


def _cli(args: list[str], project: Path, env: dict[str, str], ok_if: str | None = None) -> str:
    proc = subprocess.run(_prefect() + args, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0 and not (ok_if and ok_if in out):
        raise RuntimeError(f"prefect {' '.join(args)} failed ({proc.returncode}):\n{out[-2000:]}")
    return out


def start_server(project: Path, port: int, home: Path, log: Path, ui: bool = True,
                 host: str = "127.0.0.1") -> subprocess.Popen:
    """``prefect server start --host <host> --port <port>`` in its own session, output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = base_env(project)
    env["PREFECT_HOME"] = str(home)
    env.pop("PREFECT_API_URL", None)
    cmd = _prefect() + ["server", "start", "--host", host, "--port", str(port)] + ([] if ui else ["--no-ui"])
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def start_worker(project: Path, pool: str, env: dict[str, str], log: Path, name: str | None = None) -> subprocess.Popen:
    """``prefect worker start --pool <pool> --type process`` in its own session, output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = _prefect() + ["worker", "start", "--pool", pool, "--type", "process", "--install-policy", "never",
                        "--name", name or f"{pool}-{socket.gethostname()}-{os.getpid()}"]
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def wait_worker_started(log: Path, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited ({proc.returncode}):\n{log.read_text(errors='replace')[-2000:]}")
        if log.exists() and "started!" in log.read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise TimeoutError(f"the worker did not start within {timeout_s:g} s (see {log})")


def stop_process(pid: int, name: str, first_wait_s: float = 15.0, second_wait_s: float = 10.0) -> str:
    """SIGTERM, then a second SIGTERM (a Prefect worker's first signal only starts a graceful
    shutdown), then SIGKILL to the process group it leads. Returns what it took."""
    if not _alive(pid):
        return f"{name} (pid {pid}) was not running"
    for sig, wait in ((signal.SIGTERM, first_wait_s), (signal.SIGTERM, second_wait_s)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return f"{name} (pid {pid}) stopped"
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)  # our child when started in this process
            except ChildProcessError:
                done = 0
            if done == pid or not _alive(pid):
                return f"{name} (pid {pid}) stopped"
            time.sleep(0.25)
    try:
        os.killpg(pid, signal.SIGKILL)  # the session it was started in (start_new_session)
    except (ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
    return f"{name} (pid {pid}) killed after two SIGTERMs"


def deploy(project: Path, api_url: str, pools: tuple[str, ...] = POOLS) -> str:
    """Create the process pools and the retrain concurrency limit, then deploy ``prefect.yaml``."""
    from danvae.config import load_params
    from pipelines.flows import RETRAIN_LIMIT

    params = load_params(project / "params.yaml")
    env = base_env(project, api_url)
    env["DANVAE_RETRAIN_CRON"] = params.orchestration.retrain_cron
    for pool in pools:
        _cli(["work-pool", "create", pool, "--type", "process"], project, env, ok_if="already exists")
    _cli(["global-concurrency-limit", "create", RETRAIN_LIMIT, "--limit", "1"], project, env, ok_if="already exists")
    out = _cli(["--no-prompt", "deploy", "--all"], project, env)
    names = [ln.split("'")[1] for ln in out.splitlines() if "Deployment '" in ln and "'" in ln]
    return (f"deployed {', '.join(names) or 'prefect.yaml'} from {project} "
            f"(retrain cron {params.orchestration.retrain_cron!r} UTC)")


def read_state(project: Path) -> dict | None:
    path = project / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def start(project: Path, port: int = DEFAULT_PORT, gpu_worker: bool = True, ui: bool = True,
          host: str = "127.0.0.1") -> dict:
    state = read_state(project)
    if state and _alive(state["server"]["pid"]):
        print(f"already running: {state['server']['api_url']} (stop it with python -m pipelines.schedule stop)")
        return state
    if state:  # the server died (killed, host crash): its workers may still poll it; stop them first
        print(f"the previous server (pid {state['server']['pid']}) is gone; stopping what is left of it", flush=True)
        stop(project)
    if not port_free(port, host):
        raise SystemExit(f"port {port} on {host} is in use; pass --port")
    home = prefect_home(project)
    logs = project / LOG_DIR
    api_url = f"http://127.0.0.1:{port}/api"
    state = {"project_dir": str(project), "prefect_home": str(home),
             "started_at": datetime.now(UTC).isoformat(timespec="seconds"), "workers": []}
    server = start_server(project, port, home, logs / "server.log", ui=ui, host=host)
    state["server"] = {"pid": server.pid, "port": port, "api_url": api_url, "log": str(logs / "server.log"),
                       "ui": f"http://127.0.0.1:{port}" if ui else None}
    _write_state(project, state)
    print(f"starting the Prefect server on {api_url} (PREFECT_HOME={home}) ...", flush=True)
    try:
        took = wait_healthy(api_url, proc=server)
        print(f"server up in {took:.0f} s", flush=True)
        print(deploy(project, api_url), flush=True)
        env = base_env(project, api_url)
        env["PREFECT_HOME"] = str(home)
        for pool in POOLS if gpu_worker else ("cpu",):
            log = logs / f"worker-{pool}.log"
            proc = start_worker(project, pool, env, log)
            state["workers"].append({"pool": pool, "pid": proc.pid, "log": str(log)})
            _write_state(project, state)
            wait_worker_started(log, proc)
            print(f"worker on pool {pool!r} started (pid {proc.pid}, log {log})", flush=True)
    except BaseException:
        print("start failed; stopping what was started", file=sys.stderr)
        stop(project)
        raise
    print(f"schedule running: UI {state['server']['ui'] or '(disabled)'}; export PREFECT_API_URL={api_url} "
          f"to use it from a shell; stop with python -m pipelines.schedule stop")
    return state


def _write_state(project: Path, state: dict) -> None:
    text = json.dumps(state, indent=2) + "\n"
    atomic_write(project / STATE_FILE, lambda tmp: tmp.write_text(text))


def stop(project: Path) -> list[str]:
    """Workers first (two signals if needed), then the server; removes the state file."""
    state = read_state(project)
    if not state:
        print("nothing to stop (no .prefect/schedule.json)")
        return []
    done = [stop_process(w["pid"], f"worker on pool {w['pool']!r}") for w in state.get("workers", [])]
    if state.get("server"):
        done.append(stop_process(state["server"]["pid"], "server", first_wait_s=20.0))
    (project / STATE_FILE).unlink(missing_ok=True)
    for line in done:
        print(line)
    return done


def status(project: Path) -> int:
    state = read_state(project)
    if not state:
        print("not running (no .prefect/schedule.json)")
        return 1
    server = state["server"]
    try:
        wait_healthy(server["api_url"], timeout_s=3)
        health = "healthy"
    except (TimeoutError, RuntimeError):
        health = "not answering"
    print(f"server pid {server['pid']} ({'running' if _alive(server['pid']) else 'gone'}), "
          f"{server['api_url']}: {health}")
    for w in state.get("workers", []):
        print(f"worker pool {w['pool']!r} pid {w['pid']} ({'running' if _alive(w['pid']) else 'gone'}), log {w['log']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.schedule", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_start = sub.add_parser("start", help="server + work pools + deployments + workers")
    p_start.add_argument("--port", type=int, default=DEFAULT_PORT)
    p_start.add_argument("--no-gpu-worker", action="store_true", help="the gpu pool's worker runs on another host")
    p_start.add_argument("--no-ui", action="store_true")
    p_start.add_argument("--host", default="127.0.0.1", help="listen address (default loopback; a GPU worker on "
                         "another host needs one it can reach, e.g. 0.0.0.0 behind your firewall)")
    sub.add_parser("stop", help="stop the workers, then the server")
    sub.add_parser("status")
    sub.add_parser("deploy", help="create the pools and deploy prefect.yaml to PREFECT_API_URL (or the local server)")
    parser.add_argument("--project-dir", default=str(PROJECT_ROOT), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    project = Path(args.project_dir).resolve()
    if args.command == "start":
        start(project, args.port, gpu_worker=not args.no_gpu_worker, ui=not args.no_ui, host=args.host)
    elif args.command == "stop":
        stop(project)
    elif args.command == "status":
        return status(project)
    elif args.command == "deploy":
        state = read_state(project)
        api_url = os.environ.get("PREFECT_API_URL") or (state or {}).get("server", {}).get("api_url")
        if not api_url:
            raise SystemExit("no server: set PREFECT_API_URL or run python -m pipelines.schedule start")
        print(deploy(project, api_url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
