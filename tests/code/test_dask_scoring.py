"""Scoring fanned out on Dask returns exactly the single-process table (row order and values),
on a LocalCluster of its own and on a running scheduler; the CLI's --workers likewise."""
from __future__ import annotations

import os
from unittest import mock

import numpy as np
import pandas as pd
import pytest

from danvae import Detector, load_folder
from danvae.cli import main
from danvae.config import ModelConfig, ScoreConfig, TrainConfig
from danvae.dask_scoring import score_on_dask
from danvae.data.synthetic import generate_surfaces

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("dask")
    generate_surfaces(root / "data", n_normal=150, n_anomaly=20, size=32, difficulty="easy", seed=2)
    data = load_folder(root / "data", image_size=32)
    det = Detector(ModelConfig(zx_dim=4, zy_dim=2), image_size=32, train=TrainConfig(epochs=1, warmup_epochs=0),
                   score=ScoreConfig(batch_size=64))  # 170 images: three chunks, the last one short
    det.fit(data.images, data.is_anomaly, progress=False).save(root / "model")
    return root, data.images


def test_two_local_workers_give_exactly_the_single_process_table(saved, tmp_path):
    root, images = saved
    want, want_maps = Detector.load(root / "model").score_table(images, heatmaps=True)
    environ = dict(os.environ)
    got, maps = score_on_dask(root / "model", images, workers=2, heatmaps=True, batch_size=64,
                              scratch=tmp_path / "dask")
    assert dict(os.environ) == environ  # Dask's OMP_NUM_THREADS=1 & co. must not outlive the cluster
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert np.array_equal(maps, want_maps)
    assert any((tmp_path / "dask").iterdir())  # the workers' scratch stayed where it was told


def test_a_running_scheduler_gives_the_same_table(saved, tmp_path):
    from distributed import LocalCluster

    root, images = saved
    want = Detector.load(root / "model").score_table(images)
    # patch.dict: the environment Dask's nanny changes while spawning comes back afterwards
    import dask

    with mock.patch.dict(os.environ), dask.config.set({"temporary-directory": str(tmp_path)}), \
            LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None, host="127.0.0.1",
                         local_directory=str(tmp_path)) as cluster:
        got, maps = score_on_dask(root / "model", images, address=cluster.scheduler_address, batch_size=64)
    assert maps is None
    pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_the_cli_scores_on_dask_as_without(saved, tmp_path, monkeypatch):
    root, _ = saved
    monkeypatch.chdir(tmp_path)  # the cluster's scratch goes to ./.cache/dask
    args = ["score", "--model", str(root / "model"), "--data", str(root / "data"), "--quiet"]
    assert main([*args, "--out", "plain.csv"]) == 0
    assert main([*args, "--out", "dask.csv", "--workers", "2"]) == 0
    # the same numbers to float32 precision: two CLI processes under load have been seen to differ
    # in the sixth digit of kl_zx (a sum the CPU kernels may order differently between processes)
    pd.testing.assert_frame_equal(pd.read_csv("dask.csv"), pd.read_csv("plain.csv"), rtol=1e-4)
    assert main(["score", "--model", "models:/nope@champion", "--data", str(root / "data"), "--out", "x.csv",
                 "--workers", "2"]) == 2  # every worker loads the model from a folder
