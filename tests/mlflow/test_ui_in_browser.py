"""The MLflow UI in a real headless Chromium: the registered model's page renders its versions,
aliases and gate tags, and every request it makes stays on 127.0.0.1."""
from __future__ import annotations

import pytest

from tests.browser import chromium, render, visible_text
from tests.mlflow.conftest import MODEL_NAME, train_and_register

pytestmark = pytest.mark.slow


def test_the_registered_model_page_renders_offline(mlflow_server, surfaces, tmp_path):
    chromium()
    trained = train_and_register(surfaces, tmp_path / "run")
    dom, requests = render(f"{mlflow_server.uri}/#/models/{MODEL_NAME}", tmp_path / "chrome", wait_ms=20000)
    text = visible_text(dom)
    assert f"Registered Models {MODEL_NAME}" in text and f"Version {trained.version}" in text, text[:2000]
    assert "challenger" in text and "danvae.model_sha256" in text
    assert len(requests) >= 5  # the app, its scripts and the registry API calls
    assert all(u.startswith(mlflow_server.uri) for u in requests), [u for u in requests if "127.0.0.1" not in u]
