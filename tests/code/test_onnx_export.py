"""ONNX export: for every model kind the exported graph, run by onnxruntime, gives the
PyTorch detector's table (every score kind, the decision, the heatmap) within 1e-4 of each
output's largest value; the CLI checks that itself and refuses what it cannot export."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from danvae import Detector, load_folder
from danvae.cli import main
from danvae.config import ModelConfig, TrainConfig
from danvae.data.synthetic import generate_surfaces
from danvae.mlops.onnx_export import OUTPUTS, ExportError, OnnxDetector, export_onnx, parity

pytestmark = pytest.mark.slow
SIZE = 32
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def surfaces(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx") / "surfaces"
    generate_surfaces(root, n_normal=30, n_anomaly=10, size=SIZE, difficulty="easy", seed=5)
    return root


@pytest.fixture(scope="module")
def data(surfaces):
    return load_folder(surfaces, image_size=SIZE)


def _fitted(name: str, data, channels: int = 3) -> Detector:
    images = data.images if channels == 3 else data.images.mean(axis=3, keepdims=True).astype(np.uint8)
    det = Detector(ModelConfig(name=name, zx_dim=4, zy_dim=2), image_size=SIZE, channels=channels,
                   train=TrainConfig(epochs=1, warmup_epochs=1, seed=0))
    return det.fit(images, data.is_anomaly, masks=data.masks, has_mask=data.has_mask, progress=False)


@pytest.mark.parametrize("name", ["danvae", "vae", "dpvae", "danvae-global", "vae-global", "dpvae-global"])
def test_onnx_matches_pytorch_for_every_model_kind(name, data, tmp_path):
    det = _fitted(name, data)
    path = export_onnx(det, tmp_path / f"{name}.onnx")
    onnx.checker.check_model(str(path))
    runtime = OnnxDetector(path, batch_size=7)  # batches that do not divide the 40 images
    assert parity(det, runtime, data.images) <= TOLERANCE
    table, maps = runtime.score_table(data.images, heatmaps=True)
    reference = det.score_table(data.images)
    assert list(table.columns) == list(reference.columns) and maps.shape == (40, SIZE, SIZE)
    at_threshold = np.isclose(reference["score"], det.threshold, rtol=0, atol=1e-6)  # a validation image's score
    np.testing.assert_array_equal(table["is_anomaly"][~at_threshold], reference["is_anomaly"][~at_threshold])
    assert runtime.score_kind == det.score_kind and runtime.threshold_ == det.threshold
    np.testing.assert_array_equal(runtime.predict(data.images)[~at_threshold], det.predict(data.images)[~at_threshold])


def test_grey_images_and_a_single_image_batch(data, tmp_path):
    det = _fitted("danvae", data, channels=1)
    runtime = OnnxDetector(export_onnx(det, tmp_path / "grey.onnx"), batch_size=1)
    grey = data.images.mean(axis=3, keepdims=True).astype(np.uint8)
    assert parity(det, runtime, grey[:5]) <= TOLERANCE
    assert runtime.meta["danvae.input"].startswith(f"uint8 N×{SIZE}×{SIZE}×1")


def test_parity_notices_a_different_model(data, tmp_path):
    a = _fitted("danvae", data)
    runtime = OnnxDetector(export_onnx(a, tmp_path / "a.onnx"))
    b = Detector(ModelConfig(zx_dim=4, zy_dim=2), image_size=SIZE,
                 train=TrainConfig(epochs=1, warmup_epochs=1, seed=1))
    b.fit(data.images, data.is_anomaly, masks=data.masks, has_mask=data.has_mask, progress=False)
    assert parity(b, runtime, data.images) > 100 * TOLERANCE


def test_an_unfitted_detector_is_refused(tmp_path):
    with pytest.raises(ExportError, match="fitted"):
        export_onnx(Detector(image_size=SIZE), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_export_command(surfaces, tmp_path, capsys):
    root = surfaces
    run = tmp_path / "run"
    assert main(["train", "--data", str(root), "--out", str(run), "--epochs", "1", "--warmup-epochs", "1",
                 "--image-size", str(SIZE), "--zx-dim", "4", "--zy-dim", "2", "--quiet"]) == 0
    out = tmp_path / "exported" / "model.onnx"
    assert main(["export", "--model", str(run), "--out", str(out), "--data", str(root)]) == 0
    said = capsys.readouterr().out
    assert "scores match PyTorch within" in said and out.is_file()
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["danvae.model"] == "danvae" and meta["danvae.outputs"].count('"') == 2 * len(OUTPUTS)
    # --log-to-mlflow needs a registered version: refused before anything is written
    again = tmp_path / "again.onnx"
    assert main(["export", "--model", str(run), "--out", str(again), "--log-to-mlflow"]) == 2
    assert "models:/NAME" in capsys.readouterr().err and not again.exists()
    assert main(["export", "--model", str(tmp_path / "no-such-run"), "--out", str(again)]) == 2
