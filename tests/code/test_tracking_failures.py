"""The tracking store down: a one-line failure within seconds, and no credentials in it or in files."""
from __future__ import annotations

import time

import pytest

from danvae.mlops.runs import TrainingRun
from danvae.mlops.tracking import TrackingError, redact_uri
from tests.mlflow.conftest import free_port


def test_credentials_in_a_uri_are_redacted():
    assert redact_uri("https://alice:s3cret@mlflow.example.com/api?token=abc&x=1") \
        == "https://***@mlflow.example.com/api?token=***&x=1"
    assert redact_uri("https://mlflow.example.com:5000") == "https://mlflow.example.com:5000"
    assert redact_uri("sqlite:////work/p/mlflow.db") == "sqlite:////work/p/mlflow.db"


def test_a_server_that_is_down_fails_fast_without_leaking_the_token(monkeypatch):
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(key, raising=False)  # the project's defaults, not MLflow's 7 retries
    uri = f"http://alice:s3cret@127.0.0.1:{free_port()}"  # nothing listens there once its socket closed
    start = time.monotonic()
    with pytest.raises(TrackingError) as err:
        with TrainingRun("down", tracking_uri=uri):
            pass
    assert time.monotonic() - start < 30
    message = str(err.value)
    assert "s3cret" not in message and "alice" not in message and "\n" not in message
    assert "127.0.0.1" in message


def test_a_run_whose_process_was_killed_is_ended_by_the_next_run(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal\n"
        "from danvae.mlops.runs import TrainingRun\n"
        "run = TrainingRun('orphans').__enter__()\n"
        "print(run.run_id, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")], capture_output=True, text=True, env={**os.environ}, timeout=120)
    assert killed.returncode == -9
    orphan = killed.stdout.split()[-1]
    client = MlflowClient(uri)
    assert client.get_run(orphan).info.status == "RUNNING"
    with TrainingRun("orphans", tracking_uri=uri) as run:
        assert client.get_run(run.run_id).info.status == "RUNNING"
    assert client.get_run(orphan).info.status == "KILLED"
    assert client.get_run(run.run_id).info.status == "FINISHED"


def test_a_store_inside_the_project_is_written_relative_to_it(tmp_path):
    from danvae.mlops.tracking import portable_uri

    assert portable_uri(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path) == "sqlite:///mlflow.db"
    assert portable_uri(f"sqlite:///{tmp_path / 'a' / 'b.db'}", tmp_path) == "sqlite:///a/b.db"
    outside = f"sqlite:///{tmp_path.parent / 'other.db'}"
    assert portable_uri(outside, tmp_path) == outside
    assert portable_uri("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"
