"""The Detector as an estimator by PyOD's conventions, sklearn's clone, and the README's
notebook block run as written (with fewer epochs, so it runs in seconds)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone

from danvae import Detector, load_folder
from danvae.config import ModelConfig, SyntheticDefectConfig, TrainConfig
from danvae.data.synthetic import generate_surfaces
from danvae.holdout import with_synthetic_defects
from danvae.train import selection_start

README = Path(__file__).resolve().parents[2] / "README.md"
QUICK = TrainConfig(epochs=2, warmup_epochs=1, seed=0)


@pytest.fixture(scope="module")
def surfaces(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("estimator") / "data" / "surfaces"
    generate_surfaces(root, n_normal=40, n_anomaly=12, size=32, difficulty="easy", seed=4)
    return root


@pytest.fixture(scope="module")
def fitted(surfaces):
    data = load_folder(surfaces, image_size=32)
    det = Detector(ModelConfig(zx_dim=4, zy_dim=2), image_size=32, train=QUICK)
    return det.fit(data.images, data.is_anomaly, masks=data.masks, has_mask=data.has_mask, progress=False), data


def test_load_folder_gives_images_labels_and_masks(surfaces):
    data = load_folder(surfaces, image_size=32)
    assert data.images.shape == (52, 32, 32, 3) and data.images.dtype == np.uint8
    assert int(data.is_anomaly.sum()) == 12 and data.masks.shape == (52, 32, 32)
    assert data.has_mask.all() and data.masks[data.is_anomaly].any(axis=(1, 2)).all()
    assert not data.masks[~data.is_anomaly].any()
    plain = load_folder(surfaces, image_size=32, masks=False)
    assert plain.masks is None and np.array_equal(plain.images, data.images)


def test_pyod_conventions(fitted):
    det, data = fitted
    scores = det.decision_function(data.images)
    np.testing.assert_array_equal(scores, det.score_samples(data.images))
    labels = det.predict(data.images)
    assert labels.dtype.kind == "i" and set(np.unique(labels)) <= {0, 1}
    np.testing.assert_array_equal(labels, (scores >= det.threshold_).astype(int))
    proba = det.predict_proba(data.images)
    assert proba.shape == (52, 2) and np.allclose(proba.sum(axis=1), 1.0) and ((proba >= 0) & (proba <= 1)).all()
    np.testing.assert_array_equal(proba[:, 1] >= 0.5, labels == 1)  # 0.5 exactly at the threshold
    assert scores[data.is_anomaly].mean() > scores[~data.is_anomaly].mean()


def test_clone_and_set_params(fitted):
    det, _ = fitted
    copy = clone(det)
    assert copy is not det and copy.model is None and copy.get_params() == det.get_params()
    with pytest.raises(AttributeError, match="not fitted"):
        copy.threshold_
    copy.set_params(image_size=64)
    assert copy.image_size == 64 and copy.get_params()["train"] == QUICK
    with pytest.raises(ValueError, match="no parameter lr"):
        copy.set_params(lr=0.1)


def test_the_readme_notebook_block_runs_as_written(surfaces, monkeypatch):
    block = re.search(r"## In a notebook\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert 'load_folder("data/surfaces"' in block
    quick = block.replace('Detector("danvae", image_size=64)',
                          'Detector("danvae", image_size=64, train=TrainConfig(epochs=2, warmup_epochs=1))')
    assert quick != block, "the README's Detector(...) call changed: update this test's epoch override"
    monkeypatch.chdir(surfaces.parents[1])
    namespace = {"TrainConfig": TrainConfig}
    exec(compile(quick.replace('Detector.load("runs/a")', 'globals()["loaded"] = Detector.load("runs/a")'),
                 "README.md", "exec"), namespace)
    assert namespace["loaded"].threshold_ == namespace["det"].threshold_


def test_reconstruct_and_decode_with_nuisance_go_through_the_detector(fitted):
    det, data = fitted
    images = data.images[:7]
    rec = det.reconstruct(images)
    assert rec.dtype == np.uint8 and rec.shape == (7, det.image_size, det.image_size, det.channels)
    np.testing.assert_array_equal(rec, np.concatenate([det.reconstruct(images[:3]), det.reconstruct(images[3:])]))
    assert det.has_nuisance_latent
    # each image's own z_y gives back its reconstruction; another lighting gives another image
    own = det.latents(images)["z_y"]
    np.testing.assert_array_equal(det.decode_with_nuisance(images, own), rec)
    relit = det.decode_with_nuisance(images, own[::-1].copy())
    assert not np.array_equal(relit, rec)


def test_synthetic_validation_adds_a_defective_copy_of_each_normal_drawn_from_its_seed(surfaces):
    normals = load_folder(surfaces, image_size=32).images[:8]
    images, labels = with_synthetic_defects(normals, SyntheticDefectConfig(), seed=1)
    assert images.dtype == np.uint8 and images.shape == (16, *normals.shape[1:])
    assert labels.tolist() == [False] * 8 + [True] * 8
    np.testing.assert_array_equal(images[:8], normals)
    assert all((images[8 + i] != normals[i]).any() for i in range(8)), "every copy carries a defect"
    np.testing.assert_array_equal(with_synthetic_defects(normals, SyntheticDefectConfig(), seed=1)[0], images)
    assert not np.array_equal(with_synthetic_defects(normals, SyntheticDefectConfig(), seed=2)[0], images)


def test_with_no_validation_anomaly_the_epoch_is_chosen_on_synthetic_defects(surfaces, tmp_path):
    data = load_folder(surfaces, image_size=32)
    normals = data.images[~data.is_anomaly]
    train, val = normals[:28], normals[28:]
    cfg = TrainConfig(epochs=6, warmup_epochs=1, seed=0)
    det = Detector(ModelConfig(zx_dim=4, zy_dim=2), image_size=32, train=cfg).fit(train, val_images=val, progress=False)
    assert det.epoch_choice is not None and "synthetic defects" in det.epoch_choice
    # the kept epoch (1-based) has the best AUROC measured in keep_best's window
    window = {h["epoch"]: h["val_auroc"] for h in det.history
              if h.get("val_auroc") is not None and h["epoch"] - 1 >= selection_start(cfg)}
    assert det.best_epoch in window and window[det.best_epoch] == max(window.values())
    assert Detector.load(det.save(tmp_path / "det")).epoch_choice == det.epoch_choice

    off = cfg.model_copy(update={"synthetic": SyntheticDefectConfig(validation_defects=False)})
    plain = Detector(ModelConfig(zx_dim=4, zy_dim=2), image_size=32, train=off).fit(train, val_images=val, progress=False)
    assert plain.best_epoch is None and plain.epoch_choice.startswith("last epoch")
    assert not any(h.get("val_auroc") is not None for h in plain.history)
