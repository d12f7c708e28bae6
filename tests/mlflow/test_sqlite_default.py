"""The embedded default (``sqlite:///<project root>/mlflow.db``, artifacts in ``mlartifacts/``):
where runs go, flattening, the full cycle, a degraded challenger, a forced promotion, the
``danvae promote`` command, and loading a Detector from every kind of URI."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from tests.mlflow.conftest import MODEL_NAME, scrambled, train_and_register

pytestmark = pytest.mark.slow
PROJECT_ROOT = Path(__file__).resolve().parents[2]


# ---- configuration and flattening (no store touched) ----------------------------------------


def test_default_uri_is_the_project_sqlite_and_env_wins(monkeypatch):
    from danvae.mlops.tracking import artifact_location, default_tracking_uri, resolve_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri() == f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"
    assert resolve_tracking_uri() == default_tracking_uri()
    assert artifact_location("danvae", default_tracking_uri()) == (PROJECT_ROOT / "mlartifacts" / "danvae").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_tracking_uri() == "http://127.0.0.1:5999"
    assert artifact_location("danvae", "http://127.0.0.1:5999") is None  # the server decides
    assert resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_flatten_params_and_metrics():
    from danvae.config import ModelConfig, TrainConfig
    from danvae.mlops.flatten import flatten_metrics, flatten_params

    flat = flatten_params({"model": ModelConfig(), "train": TrainConfig(epochs=3, warmup_epochs=1),
                           "data": {"sources": [{"type": "synthetic", "seed": 0}, {"type": "folder", "path": "/d"}],
                                    "split": {"train": 0.6}, "sizes": [32, 64]}, "alpha": None})
    assert flat["model.zx_dim"] == "8" and flat["train.epochs"] == "3" and flat["train.alpha"] == "None"
    assert flat["data.sources.0.type"] == "synthetic" and flat["data.sources.1.path"] == "/d"
    assert flat["data.split.train"] == "0.6" and flat["data.sizes"] == "[32, 64]" and flat["alpha"] == "None"
    m = flatten_metrics({"auroc": 0.9, "auroc_by_brightness": [0.8, None, 1.0], "auroc_darkest": None,
                         "note": "text", "val": {"kl_zx": 0.7}, "ok": True, "n": np.int64(3)}, prefix="eval")
    assert m == {"eval.auroc": 0.9, "eval.auroc_by_brightness_0": 0.8, "eval.auroc_by_brightness_2": 1.0,
                 "eval.val.kl_zx": 0.7, "eval.ok": 1.0, "eval.n": 3.0}


# ---- the embedded store ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(sqlite_default, surfaces):
    root, _ = sqlite_default
    return train_and_register(surfaces, root / "models")


def test_store_and_artifacts_live_beside_each_other(sqlite_default, trained):
    from mlflow import MlflowClient

    from danvae.mlops.runs import metric_history

    root, uri = sqlite_default
    assert uri == f"sqlite:///{root / 'mlflow.db'}" and (root / "mlflow.db").is_file()
    exp = MlflowClient().get_experiment_by_name("danvae")
    assert exp.artifact_location == (root / "mlartifacts" / "danvae").as_uri()
    assert list((root / "mlartifacts" / "danvae").rglob("detector.pt"))
    assert not (root / "mlruns").exists()
    assert [s for s, _ in metric_history(trained.run_id, "val_auroc")] == [1, 2, 3]
    assert json.loads(trained.run_json.read_text())["tracking_uri"] == uri


def test_full_cycle_and_every_uri_kind(sqlite_default, trained, surfaces):
    import mlflow
    from mlflow import MlflowClient

    from danvae.mlops.gate import promote
    from danvae.mlops.registry import load_detector

    decision = promote(None, MODEL_NAME, trained.version, surfaces.test_images, surfaces.test_labels)
    assert decision.promoted and decision.decision == "promoted"
    again = promote(None, MODEL_NAME, trained.version, surfaces.test_images, surfaces.test_labels)
    assert again.decision == "unchanged"
    assert str(MlflowClient().get_model_version_by_alias(MODEL_NAME, "champion").version) == trained.version
    want = trained.detector.score_table(surfaces.test_images)["score"].to_numpy()
    for uri in (f"models:/{MODEL_NAME}@champion", f"models:/{MODEL_NAME}/{trained.version}", trained.model_uri,
                f"runs:/{trained.run_id}/model", trained.model_dir):
        got = load_detector(uri).score_table(surfaces.test_images)["score"].to_numpy()
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=str(uri))
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    np.testing.assert_allclose(model.predict(surfaces.test_images)["score"], want, rtol=1e-6)
    mixed = np.empty(2, dtype=object)  # two sizes in one call; one gray
    mixed[0], mixed[1] = surfaces.test_images[0], surfaces.test_images[1][4:28, :, :1]
    got = model.predict(mixed)["score"].to_numpy()
    one = [trained.detector.score_table(m[None])["score"].iloc[0] for m in mixed]
    np.testing.assert_allclose(got, one, rtol=1e-5, atol=1e-6)  # batch of 2 vs 1: cdist and conv round differently


def test_degraded_is_rejected_and_force_needs_a_reason(sqlite_default, trained, surfaces):
    from mlflow import MlflowClient

    from danvae.mlops.packaging import log_detector
    from danvae.mlops.gate import promote
    from danvae.mlops.registry import register_logged_model
    from danvae.mlops.runs import TrainingRun

    with TrainingRun(run_name="one-bad-epoch") as run:
        v2 = str(register_logged_model(log_detector(scrambled(trained.detector)), MODEL_NAME).version)
    client = MlflowClient()
    if str(client.get_registered_model(MODEL_NAME).aliases.get("champion")) != trained.version:
        promote(None, MODEL_NAME, trained.version, surfaces.test_images, surfaces.test_labels, force=True,
                reason="test setup: make v1 champion")
    decision = promote(client, MODEL_NAME, v2, surfaces.test_images, surfaces.test_labels)
    assert decision.decision == "rejected" and not decision.promoted
    assert str(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == trained.version
    assert client.get_model_version(MODEL_NAME, v2).tags["gate.decision"] == "rejected"

    with pytest.raises(ValueError, match="reason"):
        promote(client, MODEL_NAME, v2, surfaces.test_images, surfaces.test_labels, force=True, reason="  ")
    forced = promote(client, MODEL_NAME, v2, surfaces.test_images, surfaces.test_labels, force=True,
                     reason="line 4 relit; rollback planned")
    assert forced.promoted and forced.decision == "forced" and "gate would have failed" in forced.reason
    tags = client.get_model_version(MODEL_NAME, v2).tags
    assert tags["gate.forced"] == "true" and tags["gate.force_reason"] == "line 4 relit; rollback planned"
    assert str(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == v2
    assert client.get_model_version(MODEL_NAME, trained.version).tags["gate.replaced_by"] == v2
    assert run.run_id  # the degraded model was logged in its own run


def test_validation_failure_blocks_a_first_champion(sqlite_default, trained, surfaces):
    from danvae.mlops.gate import promote
    from danvae.mlops.registry import register_version

    register_version(trained.model_uri, "danvae-novalid", run_id=trained.run_id)
    d = promote(None, "danvae-novalid", "challenger", surfaces.test_images, surfaces.test_labels,
                validation_passed=False)
    assert not d.promoted and "validation did not pass" in d.reason
    d = promote(None, "danvae-novalid", "challenger", surfaces.test_images, surfaces.test_labels, min_auroc=0.999)
    assert not d.promoted and "below the floor" in d.reason


# appended to the model's own copy of danvae/detector.py: that copy reads the "older" format
_LEGACY_SHIM = """

import torch as _legacy_torch
_legacy_torch_load = _legacy_torch.load


def _legacy_load(*args, **kwargs):
    state = _legacy_torch_load(*args, **kwargs)
    if isinstance(state, dict) and "legacy_state_dict" in state:
        state["state_dict"] = state.pop("legacy_state_dict")
    return state


_legacy_torch.load = _legacy_load
"""


def test_a_champion_this_code_cannot_load_is_scored_with_its_own_code(sqlite_default, trained, surfaces):
    """A champion saved by an older danvae (here: a renamed key in detector.pt, which only the
    code the model carries understands) is still judged: scored in a fresh process with its code."""
    import torch
    from mlflow import MlflowClient

    from danvae.mlops.gate import promote
    from danvae.mlops.registry import IncompatibleModelError, load_detector, register_version
    from danvae.mlops.packaging import log_run_model
    from danvae.mlops.runs import TrainingRun

    root, _ = sqlite_default
    with TrainingRun(run_name="older-danvae") as run:
        info = log_run_model(run, trained.detector)
    model_dir = root / "mlartifacts" / "danvae" / "models" / info.model_id / "artifacts"
    pt = model_dir / "artifacts" / "detector" / "detector.pt"
    state = torch.load(pt, weights_only=True)
    state["legacy_state_dict"] = state.pop("state_dict")
    torch.save(state, pt)
    with open(model_dir / "code" / "danvae" / "detector.py", "a") as fh:
        fh.write(_LEGACY_SHIM)
    with pytest.raises(IncompatibleModelError, match="cannot load"):
        load_detector(info.model_uri)

    old = register_version(info.model_uri, "danvae-old", run_id=run.run_id)
    MlflowClient().set_registered_model_alias("danvae-old", "champion", str(old.version))  # set up: it was champion
    new = register_version(trained.model_uri, "danvae-old", run_id=trained.run_id)
    decision = promote(None, "danvae-old", new.version, surfaces.test_images, surfaces.test_labels)
    assert decision.champion_metrics["scored_with"] == "the model's own code"
    assert decision.challenger_metrics["scored_with"] == "this checkout"
    # same weights underneath: the same figures, so the gate passes
    assert decision.champion_metrics["auroc"] == pytest.approx(decision.challenger_metrics["auroc"], abs=1e-6)
    assert decision.promoted
    tags = MlflowClient().get_model_version("danvae-old", str(new.version)).tags
    assert json.loads(tags["gate.figures"])["champion"]["scored_with"] == "the model's own code"


def test_failed_block_marks_the_run_failed(sqlite_default):
    from mlflow import MlflowClient

    from danvae.mlops.runs import TrainingRun

    with pytest.raises(RuntimeError, match="boom"):
        with TrainingRun(run_name="fails", params={"a": {"b": 1}}) as run:
            run.on_epoch_end(0, {"epoch": 1, "total": 5.0, "recon": 4.0})
            raise RuntimeError("boom")
    got = MlflowClient().get_run(run.run_id)
    assert got.info.status == "FAILED" and got.data.params["a.b"] == "1" and got.data.metrics["total"] == 5.0
    with TrainingRun(run_id=run.run_id) as again:  # a stage may reopen its run
        again.log_metrics({"resumed": 1})
    got = MlflowClient().get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.data.metrics["resumed"] == 1.0


def test_promote_command(sqlite_default, trained, surfaces, capsys):
    from danvae.cli.promote import REFUSED_EXIT_CODE, PromoteCommandError, add_promote_parser
    from danvae.mlops.registry import register_version

    parser = argparse.ArgumentParser(prog="danvae")
    add_promote_parser(parser.add_subparsers(dest="command", required=True))
    register_version(trained.model_uri, "danvae-cli", run_id=trained.run_id)

    args = parser.parse_args(["promote", "--name", "danvae-cli", "--version", "1", "--data", str(surfaces.test_dir),
                              "--force"])
    with pytest.raises(PromoteCommandError, match="--reason"):
        args.func(args)
    args = parser.parse_args(["promote", "--name", "danvae-cli", "--version", "challenger", "--data",
                              str(surfaces.test_dir), "--tolerance", "0.01", "--dark-tolerance", "0.02"])
    args.func(args)
    out = json.loads(capsys.readouterr().out)
    assert out["promoted"] and out["version"] == "1" and out["challenger_metrics"]["n_images"] == 72
    from mlflow import MlflowClient

    tags = MlflowClient().get_model_version("danvae-cli", "1").tags  # no report given: not claimed as passed
    assert tags["gate.validation_passed"] == "not checked" and "validation not checked" in tags["gate.reason"]
    # a refusal is not a success: exit code 3, and the last line names the rule that refused
    report = surfaces.test_dir.parent / "failed-validation.json"
    report.write_text(json.dumps({"success": False}))
    register_version(trained.model_uri, "danvae-cli-refused", run_id=trained.run_id)
    args = parser.parse_args(["promote", "--name", "danvae-cli-refused", "--version", "challenger", "--data",
                              str(surfaces.test_dir), "--validation-report", str(report)])
    assert args.func(args) == REFUSED_EXIT_CODE == 3
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("rejected: 'danvae-cli-refused' still has no champion") and "data validation did not pass" in last
    args = parser.parse_args(["promote", "--name", "no-such-model", "--version", "1", "--data", str(surfaces.test_dir)])
    with pytest.raises(PromoteCommandError) as err:
        args.func(args)
    assert "\n" not in str(err.value)


def test_a_promotion_cut_short_leaves_no_false_decision_and_a_rerun_completes(sqlite_default, trained, surfaces,
                                                                              monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from danvae.mlops.gate import PromotionError, promote
    from danvae.mlops.registry import register_version

    name = "danvae-cut-short"
    mv = register_version(trained.model_uri, name, run_id=trained.run_id)
    real = MlflowClient.set_registered_model_alias

    def store_gone(self, model, alias, version):  # the store fails at the alias write, as when killed there
        if alias == "champion":
            raise MlflowException("connection reset by peer")
        return real(self, model, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", store_gone)
    with pytest.raises(PromotionError, match="rerunning the promotion is safe"):
        promote(None, name, mv.version, surfaces.test_images, surfaces.test_labels, min_auroc=0.0)
    client = MlflowClient()
    assert "gate.decision" not in client.get_model_version(name, mv.version).tags
    assert "champion" not in client.get_registered_model(name).aliases

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", real)
    decision = promote(None, name, mv.version, surfaces.test_images, surfaces.test_labels, min_auroc=0.0)
    assert decision.promoted
    assert client.get_model_version(name, mv.version).tags["gate.decision"] == "promoted"
    assert str(client.get_registered_model(name).aliases["champion"]) == str(mv.version)


def test_a_model_file_changed_after_registration_is_not_loaded(sqlite_default, trained, tmp_path):
    from urllib.parse import urlparse

    import mlflow
    from mlflow import MlflowClient

    from danvae.mlops.packaging import log_detector
    from danvae.mlops.registry import MODEL_SHA256_TAG, ModelIntegrityError, load_detector, register_logged_model

    name = "danvae-tampered"
    with mlflow.start_run(run_name="to-be-tampered"):
        info = log_detector(trained.detector)
    mv = MlflowClient().get_model_version(name, str(register_logged_model(info, name).version))
    assert mv.tags[MODEL_SHA256_TAG] == info.danvae_model_sha256
    load_detector(f"models:/{name}@challenger")  # intact: loads

    stored = Path(urlparse(mlflow.get_logged_model(info.model_id).artifact_location).path)
    [weights] = list(stored.rglob("detector.pt"))
    scrambled(trained.detector).save(tmp_path / "other")
    weights.write_bytes((tmp_path / "other" / "detector.pt").read_bytes())  # a valid file, another model
    for uri in (f"models:/{name}@challenger", f"models:/{name}/{mv.version}"):
        with pytest.raises(ModelIntegrityError, match="SHA-256"):
            load_detector(uri)


def test_export_logs_the_onnx_file_to_the_registered_version(sqlite_default, trained, surfaces, tmp_path):
    from mlflow import MlflowClient

    from danvae.cli import main
    from danvae.cli.export import ONNX_TAG
    from danvae.mlops.onnx_export import OnnxDetector

    uri = f"models:/{MODEL_NAME}/{trained.version}"
    out = tmp_path / "champion.onnx"
    assert main(["export", "--model", uri, "--out", str(out), "--data", str(surfaces.test_dir), "--log-to-mlflow"]) == 0
    client = MlflowClient()
    where = client.get_model_version(MODEL_NAME, trained.version).tags[ONNX_TAG]
    assert where == f"runs:/{trained.run_id}/onnx/champion.onnx"
    assert [a.path for a in client.list_artifacts(trained.run_id, "onnx")] == ["onnx/champion.onnx"]
    import mlflow

    fetched = Path(mlflow.artifacts.download_artifacts(artifact_uri=where, dst_path=str(tmp_path / "fetched")))
    ours, ref = (d.decision_function(surfaces.test_images) for d in (OnnxDetector(fetched), trained.detector))
    assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()  # relative to the scores' scale, as parity()
    assert main(["export", "--model", f"models:/{MODEL_NAME}/99", "--out", str(tmp_path / "x.onnx"),
                 "--log-to-mlflow"]) == 2


def test_the_pyfunc_of_a_recorded_nuisance_model_takes_the_factor_as_a_param(sqlite_default, lighting_run):
    import mlflow
    from mlflow.exceptions import MlflowException

    from danvae.mlops.packaging import OUTPUT_COLUMNS, log_detector

    det, images, lighting = lighting_run.detector, lighting_run.images[:8], lighting_run.lighting[:8]
    with mlflow.start_run(run_name="lighting-nuisance"):
        info = log_detector(det)
    assert info.metadata["danvae"]["nuisance"] == "lighting"
    model = mlflow.pyfunc.load_model(info.model_uri)
    got = model.predict(images, params={"nuisance": lighting.tolist()})
    want = det.score_table(images, nuisance=lighting)
    np.testing.assert_allclose(got["score"], want["score"])
    assert list(got.columns) == list(OUTPUT_COLUMNS)
    with pytest.raises(MlflowException, match="'lighting'"):
        model.predict(images)
