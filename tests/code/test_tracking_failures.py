"""The tracking store down: a one-line failure within seconds, and no credentials in it or in files."""
from __future__ import annotations

import socket
import time

import pytest

from danvae.tracking import TrackingError, TrainingRun, redact_uri


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def test_credentials_in_a_uri_are_redacted():
    assert redact_uri("https://alice:s3cret@mlflow.example.com/api?token=abc&x=1") \
        == "https://***@mlflow.example.com/api?token=***&x=1"
    assert redact_uri("https://mlflow.example.com:5000") == "https://mlflow.example.com:5000"
    assert redact_uri("sqlite:////work/p/mlflow.db") == "sqlite:////work/p/mlflow.db"


def test_a_server_that_is_down_fails_fast_without_leaking_the_token(monkeypatch):
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(key, raising=False)  # the project's defaults, not MLflow's 7 retries
    uri = f"http://alice:s3cret@127.0.0.1:{_closed_port()}"
    start = time.monotonic()
    with pytest.raises(TrackingError) as err:
        with TrainingRun("down", tracking_uri=uri):
            pass
    assert time.monotonic() - start < 30
    message = str(err.value)
    assert "s3cret" not in message and "alice" not in message and "\n" not in message
    assert "127.0.0.1" in message
