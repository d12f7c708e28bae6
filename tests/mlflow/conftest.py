"""MLflow fixtures: a real ``mlflow server`` on 127.0.0.1 (one per module), the embedded
sqlite default in a tmp dir, tiny generated surfaces, and a tiny trained detector.

Everything MLflow writes stays in pytest tmp dirs: the stores, the artifacts, and the
temporary files MLflow and the library make (``TMPDIR`` points into the session's tmp dir).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

VENV_BIN = Path(sys.executable).parent
SIZE = 32
MODEL_NAME = "danvae-test"
SERVE_LIMITS = {"max_pixels": 48 * 48, "max_batch": 100}  # small, so the serve test can cross them

# Fail fast when a server is down on purpose, instead of MLflow's minutes of retries.
TEST_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}


@pytest.fixture(scope="session", autouse=True)
def _mlflow_env(tmp_path_factory):
    """Test-wide MLflow settings and a TMPDIR inside pytest's tmp dir; restored afterwards."""
    tmp = tmp_path_factory.mktemp("tmpdir")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in TEST_ENV.items():
            mp.setenv(k, v)
        mp.setenv("TMPDIR", str(tmp))
        mp.setattr(tempfile, "tempdir", str(tmp))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        yield


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen | None, log: Path | None, timeout: float = 90.0) -> None:
    """Poll ``url`` until it answers 200; fail early (with the log's tail) if ``proc`` dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{url}: process exited with {proc.returncode} before answering\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise TimeoutError(f"{url} did not answer within {timeout:g} s\n{tail}")


def stop_process(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, wait: float = 20.0) -> None:
    """Stop a process this suite started (it leads its own process group) and its children."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=wait)


@dataclass
class MlflowServer:
    """``mlflow server`` on 127.0.0.1 over a sqlite store in ``root``; restartable on the same port."""

    root: Path
    port: int
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def store(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def log(self) -> Path:
        return self.root / f"server-{self.starts}.log"

    def start(self) -> "MlflowServer":
        return self.launch().wait_ready()

    def wait_ready(self) -> "MlflowServer":
        wait_http(f"{self.uri}/health", self.proc, self.log, timeout=120)
        return self

    def launch(self) -> "MlflowServer":
        """Start the process without waiting for it to answer."""
        self.starts += 1
        log = self.log
        cmd = [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.store}",
               "--default-artifact-root", str(self.artifacts), "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1"]
        # No job runner: in MLflow 3.17 it adds 8 processes (huey consumers, for GenAI jobs this
        # project does not use) that eat both cores for ~20 s after every start.
        env = {**os.environ, **TEST_ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    def stop(self) -> None:
        stop_process(self.proc, wait=5.0)  # then SIGKILL: a graceful drain is not needed here
        self.proc = None

    def kill(self) -> None:
        """Crash it: SIGKILL, no shutdown."""
        stop_process(self.proc, signal.SIGKILL)
        self.proc = None


@pytest.fixture(scope="module")
def _server_booting(tmp_path_factory):
    """The server process, launched first so it boots while the surfaces are generated."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), free_port()).launch()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mlflow_server(_server_booting, surfaces):
    """A real tracking server for the module (``mlflow server --backend-store-uri sqlite:///<tmp>/mlflow.db
    --default-artifact-root <tmp>/artifacts --host 127.0.0.1 --port <free> --workers 1``), answering
    /health; MLflow in this process points at it meanwhile. Tests may kill() and start() it."""
    import mlflow

    server = _server_booting.wait_ready()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", server.uri)
        mlflow.set_tracking_uri(server.uri)
        try:
            yield server
        finally:
            server.stop()
            mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def sqlite_default(tmp_path_factory):
    """The embedded default (no MLFLOW_TRACKING_URI): ``sqlite:///<root>/mlflow.db`` with
    artifacts in ``<root>/mlartifacts``, ``root`` standing in for the project root."""
    import mlflow

    from danvae.mlops.tracking import configure_tracking

    root = tmp_path_factory.mktemp("project")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(root)  # MLflow's own defaults (./mlruns) would land here too, never in the checkout
        uri = configure_tracking(root=root)
        try:
            yield root, uri
        finally:
            mlflow.set_tracking_uri(None)


@dataclass
class Surfaces:
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    test_dir: Path


@pytest.fixture(scope="session")
def surfaces(tmp_path_factory) -> Surfaces:
    """Tiny 32 px brushed-metal surfaces with easy defects: a train folder and a test folder."""
    from danvae.data.folders import discover, pack
    from danvae.data.synthetic import generate_surfaces

    root = tmp_path_factory.mktemp("mlflow-surfaces")
    kw = dict(size=SIZE, difficulty="easy", materials=["brushed_metal"])
    generate_surfaces(root / "train", n_normal=60, n_anomaly=12, seed=1, **kw)
    generate_surfaces(root / "test", n_normal=60, n_anomaly=12, seed=2, dark_share=0.3, **kw)
    tr, te = pack(discover(root / "train"), SIZE), pack(discover(root / "test"), SIZE)
    return Surfaces(tr.images, (tr.table["label"] == "anomaly").to_numpy(),
                    te.images, (te.table["label"] == "anomaly").to_numpy(), root / "test")


def new_detector():
    from danvae.config import TrainConfig
    from danvae.detector import Detector

    return Detector("danvae", image_size=SIZE, train=TrainConfig(epochs=3, warmup_epochs=1))


def scrambled(detector, seed: int = 1):
    """A copy of ``detector`` whose weights are replaced by N(0, 1) noise: a deliberately bad
    challenger (same score kind and threshold). On these tiny 3-epoch models a one-epoch model
    scores as well as a three-epoch one (``recon_max`` finds easy defects almost untrained),
    so scrambling is the reliable way down: AUROC ~0.77 vs ~0.86 here, darkest quintile ~0.5."""
    import copy

    import torch

    bad = copy.deepcopy(detector)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in bad.model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return bad


@dataclass
class Trained:
    detector: object
    run_id: str
    model_uri: str
    version: str
    run_json: Path
    model_dir: Path


def train_and_register(surfaces: Surfaces, out: Path, name: str = MODEL_NAME) -> Trained:
    """What the train stage does: one run with params, tags and per-epoch metrics around the
    fit; the detector saved and logged as a pyfunc; run.json; then the registration."""
    from danvae.mlops.registry import MODEL_SHA256_TAG, register_version
    from danvae.mlops.packaging import log_run_model
    from danvae.mlops.runs import TrainingRun

    det = new_detector()
    params = {"model": det.model_config, "train": det.train_config, "score": det.score_config,
              "data": {"image_size": SIZE, "sources": [{"type": "synthetic", "n_normal": 60}]}}
    with TrainingRun(params=params, data_version="md5-test-0001", run_name="tiny") as run:
        det.fit(surfaces.train_images, surfaces.train_labels, progress=False, on_epoch_end=run.on_epoch_end)
        det.save(out / "detector")
        info = log_run_model(run, det, limits=SERVE_LIMITS)
        run_json = run.write_run_json(out / "run.json")
    mv = register_version(info.model_uri, name, run_id=run.run_id, tags={MODEL_SHA256_TAG: info.danvae_model_sha256})
    return Trained(det, run.run_id, info.model_uri, str(mv.version), run_json, out / "detector")
