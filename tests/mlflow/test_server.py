"""Against a real ``mlflow server`` on 127.0.0.1 (started and stopped here): a tracked train run,
register → gate → promote → load by alias → predict, a degraded challenger that stays out,
the pyfunc in a fresh process, ``mlflow models serve`` over HTTP, and the server killed
during registration."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.mlflow.conftest import (
    MODEL_NAME, SERVE_LIMITS, TEST_ENV, VENV_BIN, free_port, scrambled, stop_process, train_and_register, wait_http,
)

pytestmark = pytest.mark.slow
LOSSES = ("total", "recon", "kl_x", "kl_y", "aux", "val_auroc")


def resized(images: np.ndarray, size: int) -> np.ndarray:
    """The same images at another size (the model must resize them as training did)."""
    return np.stack([np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.BILINEAR)) for a in images])


@pytest.fixture(scope="module")
def trained(mlflow_server, surfaces, tmp_path_factory):
    return train_and_register(surfaces, tmp_path_factory.mktemp("stage-out"))


@pytest.fixture(scope="module")
def champion(trained, surfaces):
    from danvae.mlops.gate import promote

    return promote(None, MODEL_NAME, trained.version, surfaces.test_images, surfaces.test_labels,
                   auroc_tolerance=0.01, dark_tolerance=0.02, validation_passed=True, min_auroc=0.6)


@pytest.fixture(scope="module")
def serving(champion, mlflow_server, tmp_path_factory):
    """``mlflow models serve`` of the champion, started as soon as there is one so that it boots
    while other tests run; the serve test waits for it. Stopped after the module."""
    root = tmp_path_factory.mktemp("serve")
    port, log = free_port(), root / "serve.log"
    # `mlflow models serve` execs `uvicorn` by name: the venv's bin must be on PATH (as when activated)
    env = {**os.environ, **TEST_ENV, "MLFLOW_TRACKING_URI": mlflow_server.uri,
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL_NAME}@champion",
           "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc, port, log
    finally:
        stop_process(proc, wait=5.0)


def test_train_run_is_tracked_on_the_server(trained, mlflow_server):
    from mlflow import MlflowClient

    from danvae.mlops.provenance import git_commit
    from danvae.mlops.runs import metric_history

    run = MlflowClient().get_run(trained.run_id)
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert p["model.zx_dim"] == "8" and p["train.epochs"] == "3" and p["train.warmup_epochs"] == "1"
    assert p["data.sources.0.type"] == "synthetic" and p["score.kind"] == "auto"
    assert p["detector.score_kind"] == trained.detector.score_kind
    tags = run.data.tags
    assert tags["data_version"] == "md5-test-0001"
    commit = git_commit()
    assert commit is None or tags["git_commit"] == commit
    for key in LOSSES:  # every epoch, step = epoch (val_auroc arrives one callback late, still all three)
        steps = [s for s, _ in metric_history(trained.run_id, key)]
        assert steps == [1, 2, 3], (key, steps)
    recon = [v for _, v in metric_history(trained.run_id, "recon")]
    assert recon == pytest.approx([r["recon"] for r in trained.detector.history])
    assert "threshold" in run.data.metrics
    summary = json.loads(trained.run_json.read_text())
    assert summary["run_id"] == trained.run_id and summary["model_uri"] == trained.model_uri
    assert summary["tracking_uri"] == mlflow_server.uri
    # the server decides where artifacts live: under its --default-artifact-root
    assert any(mlflow_server.artifacts.rglob("detector.pt"))


def test_register_gate_promote_load_predict(trained, champion, serving, surfaces):
    import mlflow
    from mlflow import MlflowClient

    from danvae.mlops.registry import load_detector

    client = MlflowClient()
    mv = client.get_model_version(MODEL_NAME, trained.version)
    assert mv.status == "READY" and "challenger" in mv.aliases
    assert champion.promoted and champion.decision == "promoted" and champion.champion_version is None
    assert champion.challenger_metrics["auroc"] >= 0.6
    assert str(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == trained.version
    tags = client.get_model_version(MODEL_NAME, trained.version).tags
    assert tags["gate.decision"] == "promoted" and "first champion" in tags["gate.reason"]
    figures = json.loads(tags["gate.figures"])  # the figures are one JSON tag; a few flat tags beside it
    assert figures["challenger"]["auroc"] == pytest.approx(champion.challenger_metrics["auroc"], abs=1e-9)
    assert figures["champion"] is None and figures["tolerances"] == {"auroc": 0.01, "dark": 0.02, "min_auroc": 0.6}
    assert len([k for k in tags if k.startswith("gate.")]) <= 5

    expected = trained.detector.score_table(surfaces.test_images)
    loaded = load_detector(f"models:/{MODEL_NAME}@champion")
    np.testing.assert_allclose(loaded.score_table(surfaces.test_images)["score"], expected["score"], rtol=1e-6)

    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    big = resized(surfaces.test_images[:8], 48)  # any size: resized as training did
    out = model.predict(big)
    want = trained.detector.score_table(big)
    from danvae.mlops.packaging import OUTPUT_COLUMNS

    assert list(out.columns) == list(OUTPUT_COLUMNS)
    for col in out.columns:
        np.testing.assert_allclose(out[col].to_numpy(dtype=float), want[col].to_numpy(dtype=float), rtol=1e-6)


def test_later_stages_log_into_the_same_run(trained, surfaces, tmp_path):
    from mlflow import MlflowClient

    from danvae.evaluation.metrics import evaluate_scores
    from danvae.mlops.runs import log_to_run

    table = trained.detector.score_table(surfaces.test_images)
    table["label"] = np.where(surfaces.test_labels, "anomaly", "normal")
    metrics = evaluate_scores(table)
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    logged = log_to_run(trained.run_id, metrics, [tmp_path / "metrics.json"])
    run = MlflowClient().get_run(trained.run_id)
    for i, v in enumerate(metrics["auroc_by_brightness"]):
        assert (f"auroc_by_brightness_{i}" in run.data.metrics) == (v is not None)
    assert run.data.metrics["auroc"] == pytest.approx(metrics["auroc"])
    assert set(logged) <= set(run.data.metrics)
    assert "metrics.json" in [f.path for f in MlflowClient().list_artifacts(trained.run_id)]


def test_degraded_challenger_leaves_champion(trained, champion, surfaces):
    from mlflow import MlflowClient

    from danvae.mlops.packaging import log_run_model
    from danvae.mlops.gate import promote
    from danvae.mlops.registry import register_logged_model
    from danvae.mlops.runs import TrainingRun

    bad = scrambled(trained.detector)
    with TrainingRun(run_name="degraded") as run:
        info = log_run_model(run, bad)
    client = MlflowClient()
    v2 = str(register_logged_model(info, MODEL_NAME).version)
    assert str(client.get_model_version_by_alias(MODEL_NAME, "challenger").version) == v2

    decision = promote(None, MODEL_NAME, "challenger", surfaces.test_images, surfaces.test_labels,
                       auroc_tolerance=0.01, dark_tolerance=0.02, validation_passed=True)
    assert not decision.promoted and decision.decision == "rejected"
    assert decision.champion_version == trained.version
    assert decision.challenger_metrics["auroc"] < decision.champion_metrics["auroc"] - 0.01
    assert str(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == trained.version
    tags = client.get_model_version(MODEL_NAME, v2).tags
    assert tags["gate.decision"] == "rejected" and "below champion" in tags["gate.reason"]
    figures = json.loads(tags["gate.figures"])
    assert figures["champion"]["auroc"] == pytest.approx(decision.champion_metrics["auroc"], abs=1e-9)
    assert figures["champion_version"] == trained.version
    judged = json.loads(client.get_model_version(MODEL_NAME, trained.version).tags[f"gate.v{v2}"])
    assert judged["decision"] == "rejected"
    assert judged["challenger_auroc"] == pytest.approx(decision.challenger_metrics["auroc"], abs=1e-9)


def test_pyfunc_in_a_fresh_process(trained, champion, surfaces, mlflow_server, tmp_path):
    """A new interpreter with mlflow and the model only: the project's editable install is cut
    off, so ``danvae`` must come from the code the model carries."""
    images = resized(surfaces.test_images[:10], 40)
    np.save(tmp_path / "images.npy", images)
    code = (
        "import sys, json\n"
        "sys.meta_path = [f for f in sys.meta_path if '__editable__' not in getattr(f, '__module__', '')]\n"
        "import mlflow, numpy as np\n"
        "assert 'danvae' not in sys.modules\n"
        "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "out = model.predict(np.load(sys.argv[2]))\n"
        "out.to_csv(sys.argv[3], index=False)\n"
        "import danvae\n"
        "print(json.dumps({'danvae': danvae.__file__}))\n"
    )
    env = {**os.environ, **TEST_ENV, "MLFLOW_TRACKING_URI": mlflow_server.uri}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-c", code, f"models:/{MODEL_NAME}@champion", str(tmp_path / "images.npy"),
                           str(tmp_path / "out.csv")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    origin = json.loads(done.stdout.strip().splitlines()[-1])["danvae"]
    assert f"code{os.sep}danvae" in origin and not origin.startswith(str(VENV_BIN.parents[1]) + os.sep + "danvae")
    out = pd.read_csv(tmp_path / "out.csv")
    want = trained.detector.score_table(images)
    for col in ("score", "kl_zx", "llr_zx", "elbo", "recon", "recon_max", "brightness"):
        np.testing.assert_allclose(out[col], want[col].to_numpy(dtype=float), rtol=1e-6)
    assert out["is_anomaly"].astype(bool).tolist() == want["is_anomaly"].tolist()


def test_models_serve_answers_a_batch(trained, serving, surfaces):
    proc, port, log = serving
    wait_http(f"http://127.0.0.1:{port}/ping", proc, log, timeout=150)
    images = resized(surfaces.test_images[:6], 40)
    body = json.dumps({"inputs": images.tolist()}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 200
        answer = json.loads(resp.read())
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                 data=json.dumps({"instances": images[:2].tolist()}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert len(json.loads(resp.read())["predictions"]) == 2
    rows = answer["predictions"]
    want = trained.detector.score_table(images)
    assert len(rows) == 6
    from danvae.mlops.packaging import OUTPUT_COLUMNS

    assert set(rows[0]) == set(OUTPUT_COLUMNS) >= {"brightness", "score", "is_anomaly", "head_max", "recon_max"}
    np.testing.assert_allclose([r["score"] for r in rows], want["score"], rtol=1e-6)
    assert [r["is_anomaly"] for r in rows] == want["is_anomaly"].tolist()

    # past the limits logged with the model, or floats: 400 with the reason, and the server keeps answering
    too_big = resized(surfaces.test_images[:1], 49)
    too_many = np.repeat(images[:1], SERVE_LIMITS["max_batch"] + 1, axis=0)
    as_floats = images[:2] / 255.0  # an image in [0, 1]: refused, not cast to black
    for batch, says in ((too_big, "serve.max_pixels"), (too_many, "serve.max_batch"), (as_floats, "floating-point")):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                     data=json.dumps({"inputs": batch.tolist()}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=60)
        assert refused.value.code == 400 and says in refused.value.read().decode()
    with urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"},
            method="POST"), timeout=60) as resp:
        assert resp.status == 200


def _alias_versions_ready(client, name: str) -> dict[str, str]:
    """alias → version, asserting every aliased version is READY."""
    model = client.get_registered_model(name)
    for alias, version in model.aliases.items():
        assert client.get_model_version(name, version).status == "READY", (alias, version)
    return {a: str(v) for a, v in model.aliases.items()}


def test_server_killed_during_registration(trained, champion, mlflow_server, tmp_path, monkeypatch):
    """The server dies while registering one model (its version exists, its alias is not set
    yet), and is still down when the next model's registration starts (between log and
    register): a one-line error each time, the stage's files intact, no alias on an incomplete
    version; after a restart on the same store, rerunning both succeeds without duplicates."""
    from mlflow import MlflowClient

    from danvae.detector import Detector
    from danvae.mlops.registry import MODEL_URI_TAG, RegistrationError, register_version
    from danvae.mlops.packaging import log_run_model
    from danvae.mlops.runs import TrainingRun
    from danvae.mlops.tracking import TrackingError

    logged = []
    for i in range(2):
        with TrainingRun(run_name=f"crash-{i}") as run:
            info = log_run_model(run, trained.detector)
            run.write_run_json(tmp_path / f"run-{i}.json")
        logged.append((info.model_uri, run.run_id))
    trained.detector.save(tmp_path / "detector")
    before = _alias_versions_ready(MlflowClient(), MODEL_NAME)
    real_set_alias = MlflowClient.set_registered_model_alias

    def crash_then_set(self, name, alias, version):
        mlflow_server.kill()  # SIGKILL: the version exists and is READY, its alias is not set yet
        return real_set_alias(self, name, alias, version)

    # 1. killed while registering
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", crash_then_set)
    with pytest.raises(RegistrationError) as err:
        register_version(logged[0][0], MODEL_NAME, run_id=logged[0][1])
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", real_set_alias)
    msg = str(err.value)
    assert "\n" not in msg and "pointing alias 'challenger'" in msg and "not reachable" in msg
    assert "rerunning the registration is safe" in msg

    # 2. still down when the next registration starts (between log and register)
    with pytest.raises(RegistrationError) as err:
        register_version(logged[1][0], MODEL_NAME, run_id=logged[1][1])
    msg = str(err.value)
    assert "\n" not in msg and "not reachable" in msg and "rerunning the registration is safe" in msg

    # a new run cannot start either: one line, no traceback needed to understand it
    with pytest.raises(TrackingError) as err:
        with TrainingRun(run_name="while-down"):
            pass
    assert "\n" not in str(err.value) and "not reachable" in str(err.value)

    # the stage's files are intact
    for i, (uri, _) in enumerate(logged):
        assert json.loads((tmp_path / f"run-{i}.json").read_text())["model_uri"] == uri
    Detector.load(tmp_path / "detector")

    mlflow_server.start()  # same store, same port
    client = MlflowClient()
    assert _alias_versions_ready(client, MODEL_NAME) == before  # no alias moved to the half-registered version
    versions = []
    for uri, run_id in logged:
        mv = register_version(uri, MODEL_NAME, run_id=run_id)
        assert mv.status == "READY"
        assert str(client.get_model_version_by_alias(MODEL_NAME, "challenger").version) == str(mv.version)
        versions.append(str(mv.version))
    mine = {str(v.version): v.tags.get(MODEL_URI_TAG) for v in client.search_model_versions(f"name='{MODEL_NAME}'")
            if v.tags.get(MODEL_URI_TAG) in {u for u, _ in logged}}
    assert sorted(mine) == sorted(versions)  # the first rerun reused its version: no duplicates
    aliases = _alias_versions_ready(client, MODEL_NAME)
    assert aliases["champion"] == trained.version and aliases["challenger"] == versions[-1]
