"""The score-folder flow on prefect-dask's DaskTaskRunner (a LocalCluster of 2 worker processes),
run against the session's Prefect server: one task run per chunk, and exactly the table
``danvae score`` writes in one process."""
from __future__ import annotations

import os

import pandas as pd
import pytest

from danvae import Detector, load_folder
from danvae.cli import main
from danvae.config import ModelConfig, ScoreConfig, TrainConfig
from danvae.data.nuisance import nuisance_values
from danvae.data.synthetic import generate_surfaces
from pipelines.scoring_flow import score_folder_on_dask

pytestmark = pytest.mark.slow


def test_the_flow_scores_on_dask_as_danvae_score_does(prefect_server, tmp_path, monkeypatch):
    generate_surfaces(tmp_path / "data", n_normal=110, n_anomaly=20, size=32, difficulty="easy", seed=6)
    data = load_folder(tmp_path / "data", image_size=32)
    # a model of the recorded lighting (data/nuisance.csv): each chunk's task gets its images' values too
    det = Detector(ModelConfig(zx_dim=4, zy_dim=2), image_size=32, train=TrainConfig(epochs=1, warmup_epochs=0),
                   score=ScoreConfig(batch_size=48), nuisance="lighting")  # 130 images: three chunks, the last short
    det.fit(data.images, data.is_anomaly, progress=False, nuisance=nuisance_values(data.table, "lighting"))
    det.save(tmp_path / "model")
    assert main(["score", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "data"),
                 "--out", str(tmp_path / "single.csv"), "--quiet"]) == 0
    monkeypatch.chdir(tmp_path)  # the cluster's scratch: ./.cache/dask
    environ = dict(os.environ)
    result = score_folder_on_dask(str(tmp_path / "model"), str(tmp_path / "data"), str(tmp_path / "flow.csv"), workers=2)
    assert dict(os.environ) == environ
    assert result["images"] == 130 and result["chunks"] == 3
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "flow.csv"), pd.read_csv(tmp_path / "single.csv"),
                                  check_exact=True)
    assert pd.read_csv(tmp_path / "flow.csv")["nuisance"].between(0.0, 2.0).all()
    assert any((tmp_path / ".cache" / "dask").iterdir())

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        [run] = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["score-folder"])),
                                      sort=FlowRunSort.START_TIME_DESC, limit=1)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    assert run.state_type.value == "COMPLETED"
    chunks = [t for t in tasks if t.name.startswith("score-chunk")]
    assert len(chunks) == 3 and all(t.state_type.value == "COMPLETED" for t in chunks)
