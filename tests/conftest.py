"""Shared fixtures: tool settings kept offline and inside the project, tiny generated data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from tests.bad_input import bad_corpus, make  # noqa: E402,F401  (fixtures for every test folder)


@pytest.fixture(scope="session")
def easy_surfaces(tmp_path_factory) -> Path:
    """A small labelled folder of 32 px generated surfaces with easy defects."""
    from danvae.data.synthetic import generate_surfaces

    out = tmp_path_factory.mktemp("surfaces")
    generate_surfaces(out, n_normal=160, n_anomaly=24, size=32, dark_share=0.25, seed=1, difficulty="easy")
    return out


@pytest.fixture(scope="session")
def lighting_run(tmp_path_factory):
    """A tiny detector whose nuisance factor is the recorded ``lighting`` column of the generated
    folder's nuisance.csv (not the measured brightness), with the images and values it saw."""
    from types import SimpleNamespace

    from danvae import Detector
    from danvae.config import TrainConfig
    from danvae.data.folders import discover, pack
    from danvae.data.nuisance import nuisance_values
    from danvae.data.synthetic import generate_surfaces

    folder = tmp_path_factory.mktemp("lighting")
    truth = generate_surfaces(folder, n_normal=80, n_anomaly=20, size=32, dark_share=0.3, seed=3)
    packed = pack(discover(folder), 32)
    lighting = nuisance_values(packed.table, "lighting")
    is_anomaly = (packed.table["label"] == "anomaly").to_numpy()
    det = Detector("danvae", image_size=32, train=TrainConfig(epochs=2, warmup_epochs=1), nuisance="lighting")
    det.fit(packed.images, is_anomaly, nuisance=lighting, progress=False)
    return SimpleNamespace(detector=det, folder=folder, truth=truth, images=packed.images, table=packed.table,
                           lighting=lighting, is_anomaly=is_anomaly)
