"""A recorded nuisance factor (data.nuisance = a column of nuisance.csv) in place of brightness:
read at ingest, used by the conditional prior, the regressor, the score adjustment and the
per-bin metrics, and required wherever the detector scores."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from danvae import Detector
from danvae.data.ingest import ingest
from danvae.data.manifest import QUARANTINE
from danvae.data.nuisance import INFO_COLUMN, NUISANCE_FILE, NuisanceError, nuisance_values, read_nuisance_file
from danvae.data.synthetic import generate_surfaces
from danvae.evaluation.metrics import evaluate_scores
from danvae.models.base import Batch
from danvae.train import Trainer


def test_ingest_keeps_each_images_recorded_factors(tmp_path):
    truth = generate_surfaces(tmp_path / "src", n_normal=12, n_anomaly=4, size=32, seed=2)
    result = ingest([("src", tmp_path / "src")], tmp_path / "data", image_size=32)
    manifest = result.manifest
    assert len(manifest) == 16 and (manifest[INFO_COLUMN] != "").all()
    expected = dict(zip(truth["file"], truth["lighting"]))
    got = nuisance_values(manifest, "lighting")
    rel = [Path(p).relative_to(tmp_path / "src").as_posix() for p in manifest["path"]]
    np.testing.assert_allclose(got, [expected[r] for r in rel])
    np.testing.assert_array_equal(nuisance_values(manifest, "brightness"), manifest["brightness"])


def test_a_bad_nuisance_file_is_quarantined_whole_and_no_image_is_lost(tmp_path):
    generate_surfaces(tmp_path / "src", n_normal=6, n_anomaly=2, size=32, seed=2)
    table = pd.read_csv(tmp_path / "src" / NUISANCE_FILE, dtype=str)
    table.loc[3, "lighting"] = "bright"
    table.to_csv(tmp_path / "src" / NUISANCE_FILE, index=False)
    result = ingest([("src", tmp_path / "src")], tmp_path / "data", image_size=32)
    assert len(result.manifest) == 8 and (result.manifest[INFO_COLUMN] == "").all()
    quarantined = pd.read_csv(tmp_path / "data" / QUARANTINE)
    [reason] = quarantined.loc[quarantined["path"].str.endswith(NUISANCE_FILE), "reason"]
    assert "lighting" in reason and "not finite numbers" in reason
    with pytest.raises(NuisanceError, match=r"'lighting' is unknown for 8 of 8 images"):
        nuisance_values(result.manifest, "lighting")


@pytest.mark.parametrize("content, says", [
    ("file,exposure\na.png,1\n", "needs a 'path' column"),
    ("path\na.png\n", "needs a 'path' column"),
    ("path,exposure\na.png,inf\n", "not finite numbers"),
])
def test_nuisance_files_that_cannot_be_used_are_named(tmp_path, content, says):
    (tmp_path / NUISANCE_FILE).write_text(content)
    values, problems = read_nuisance_file(tmp_path)
    assert values == {} and len(problems) == 1 and says in problems[0][1]


def test_partly_known_factor_names_the_images_that_lack_it(tmp_path):
    (tmp_path / NUISANCE_FILE).write_text("path,exposure\na.png,0.5\n")
    values, _ = read_nuisance_file(tmp_path)
    table = pd.DataFrame({"path": [str(tmp_path / "a.png"), str(tmp_path / "b.png")]})
    table[INFO_COLUMN] = table["path"].map(values).fillna("")
    assert json.loads(table[INFO_COLUMN][0]) == {"exposure": 0.5}
    with pytest.raises(NuisanceError, match=r"unknown for 1 of 2 images \(e\.g\. .*b\.png\)"):
        nuisance_values(table, "exposure")


def test_the_detector_scores_with_the_recorded_factor_and_needs_it(lighting_run):
    det, images, lighting = lighting_run.detector, lighting_run.images, lighting_run.lighting
    assert det.nuisance_range == (pytest.approx(lighting.min()), pytest.approx(lighting.max()))
    table = det.score_table(images, nuisance=lighting)
    assert list(table.columns[:5]) == ["brightness", "nuisance", "score", "is_anomaly", "normalized_score"]
    np.testing.assert_array_equal(table["nuisance"], lighting)
    with pytest.raises(NuisanceError, match="'lighting'"):
        det.score_table(images)
    with pytest.raises(ValueError, match="nuisance values"):
        det.score_table(images, nuisance=lighting[:3])
    # the conditional prior p(z_y|y) reads the factor (the ELBO moves with it), the anomaly head does not
    other = det.score_table(images, nuisance=lighting[::-1].copy())
    assert not np.allclose(other["elbo"], table["elbo"])
    np.testing.assert_array_equal(other["head_max"], table["head_max"])
    # the normal-score trend is fitted over the factor, so the decision score moves with it too
    assert det.brightness_trend is not None and not np.allclose(other["score"], table["score"])


def test_the_factor_and_its_range_survive_save_and_load(lighting_run, tmp_path):
    det = lighting_run.detector
    det.save(tmp_path / "run")
    back = Detector.load(tmp_path / "run")
    assert back.nuisance == "lighting" and back.nuisance_range == det.nuisance_range
    assert back.get_params()["nuisance"] == "lighting"
    pd.testing.assert_frame_equal(back.score_table(lighting_run.images, nuisance=lighting_run.lighting),
                                  det.score_table(lighting_run.images, nuisance=lighting_run.lighting))


def test_metrics_per_quintile_of_the_factor(lighting_run):
    table = lighting_run.detector.score_table(lighting_run.images, nuisance=lighting_run.lighting)
    table["label"] = np.where(lighting_run.is_anomaly, "anomaly", "normal")
    metrics = evaluate_scores(table)
    assert len(metrics["auroc_by_nuisance"]) == 5
    assert all(v is None or 0.0 <= v <= 1.0 for v in metrics["auroc_by_nuisance"])
    assert -1.0 <= metrics["nuisance_spearman_normal"] <= 1.0
    assert "auroc_by_nuisance" not in evaluate_scores(table.drop(columns="nuisance"))


def test_relit_and_cropped_images_keep_a_recorded_factor_honest(lighting_run):
    trainer = Trainer(lighting_run.detector.model, lighting_run.detector.train_config)
    x = torch.rand(6, 3, 32, 32)
    y = torch.linspace(0.1, 0.9, 6)

    def batch() -> Batch:
        return Batch(x=x.clone(), y=y.clone(), y_known=torch.ones(6, dtype=torch.bool),
                     anomaly=torch.zeros(6, dtype=torch.bool))

    gen = torch.Generator().manual_seed(0)
    trainer.augmenter.y_measured = False  # a recorded factor: a relit image's label no longer holds, a crop's does
    relit = trainer.augmenter.relight_some(batch(), gen, share=1.0)
    assert not relit.y_known.any() and torch.equal(relit.y, y)
    assert torch.equal(trainer.augmenter.crop(batch(), [0] * 6, [0] * 6).y, y)
    trainer.augmenter.y_measured = True  # brightness: measured again on the relit or cropped image
    relit = trainer.augmenter.relight_some(batch(), torch.Generator().manual_seed(0), share=1.0)
    assert relit.y_known.all() and not torch.allclose(relit.y, y)
    assert not torch.allclose(trainer.augmenter.crop(batch(), [0] * 6, [0] * 6).y, y)


def test_danvae_score_reads_the_factor_beside_the_images(lighting_run, tmp_path, capsys):
    from danvae.cli import main

    lighting_run.detector.save(tmp_path / "run")
    out = tmp_path / "scores.csv"
    assert main(["score", "--model", str(tmp_path / "run"), "--data", str(lighting_run.folder), "--out", str(out),
                 "--quiet"]) == 0
    scored = pd.read_csv(out).set_index("path")
    expected = pd.Series(lighting_run.lighting, index=lighting_run.table["path"])
    np.testing.assert_allclose(scored.loc[expected.index, "nuisance"], expected)
    (lighting_run.folder / NUISANCE_FILE).rename(tmp_path / "moved.csv")  # the same folder without its factor
    try:
        assert main(["score", "--model", str(tmp_path / "run"), "--data", str(lighting_run.folder),
                     "--out", str(out), "--quiet"]) == 2
    finally:
        (tmp_path / "moved.csv").rename(lighting_run.folder / NUISANCE_FILE)
    assert "'lighting' is unknown for 100 of 100 images" in capsys.readouterr().err
