"""Model and checkpoint files are read as weights only: a crafted file never runs code."""
from __future__ import annotations

import os

import pytest
import torch

from danvae.model_file import CorruptModelFileError, UnsafeModelFileError, load_weights


class _Payload:
    """Unpickling this calls os.system: what a tampered detector.pt would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _craft(path, marker):
    torch.save({"meta": {}, "state_dict": {}, "history": _Payload(marker)}, path)


def test_a_crafted_model_file_is_refused_without_running_its_code(tmp_path):
    marker = tmp_path / "pwned"
    _craft(tmp_path / "detector.pt", marker)
    with pytest.raises(UnsafeModelFileError, match="beyond weights"):
        load_weights(tmp_path / "detector.pt")
    assert not marker.exists()


def test_detector_load_and_the_cli_refuse_a_crafted_detector(tmp_path, capsys):
    from danvae.cli import main
    from danvae.detector import Detector

    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    _craft(run / "detector.pt", marker)
    with pytest.raises(UnsafeModelFileError):
        Detector.load(run)
    (tmp_path / "data").mkdir()
    assert main(["score", "--model", str(run), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "s.csv")]) == 2
    assert "beyond weights" in capsys.readouterr().err
    assert not marker.exists()


def test_a_truncated_file_is_reported_as_corrupt(tmp_path):
    path = tmp_path / "detector.pt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CorruptModelFileError, match="not a readable model file"):
        load_weights(path)


def test_real_files_still_load(tmp_path):
    state = {"epoch": 3, "model": {"w": torch.ones(2)}, "history": [{"loss": 1.5}], "config": {"lr": 1e-3, "x": None}}
    torch.save(state, tmp_path / "last.pt")
    loaded = load_weights(tmp_path / "last.pt")
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], torch.ones(2))


def test_a_detector_file_keeps_its_likelihood_when_the_default_moves(lighting_run, tmp_path):
    from danvae import Detector

    det = lighting_run.detector
    path = det.save(tmp_path / "new")
    state = load_weights(path)
    assert state["meta"]["model"]["likelihood"] == "relative"  # stored resolved, not as "auto"
    assert Detector.load(tmp_path / "new").model.likelihood.kind == "relative"
    state["meta"]["model"]["likelihood"] = "auto"  # what a file of an earlier version holds
    (tmp_path / "old").mkdir()
    torch.save(state, tmp_path / "old" / path.name)
    old = Detector.load(tmp_path / "old")
    assert old.model.likelihood.kind == "calibrated"  # what auto meant when it was written
    images, lighting = lighting_run.images[:8], lighting_run.lighting[:8]
    new_table, old_table = det.score_table(images, nuisance=lighting), old.score_table(images, nuisance=lighting)
    assert new_table["head_max"].equals(old_table["head_max"])
    assert not new_table["elbo"].equals(old_table["elbo"])  # the likelihood's own score reads errors its way
