import math

import pytest
import torch

from danvae.config import ModelConfig, TrainConfig
from danvae.models import build_model
from danvae.train import Trainer, TrainingDiverged
from tests.code.test_models import _tiny_data

CFG = TrainConfig(epochs=4, warmup_epochs=2, batch_size=8, seed=3)


def _model(seed: int):
    torch.manual_seed(seed)
    return build_model(ModelConfig(zx_dim=4, zy_dim=2), 3, 32)


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path):
    data = _tiny_data()
    full = Trainer(_model(0), CFG, tmp_path / "full", progress=False)
    full_history = full.fit(data)

    interrupted = Trainer(_model(0), CFG, tmp_path / "cut", progress=False)
    original = interrupted._step

    def crash_in_third_epoch(batch, weights, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(batch, weights, epoch)

    interrupted._step = crash_in_third_epoch
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(data)

    # A new process: a differently initialised model, restored from the checkpoint.
    resumed = Trainer(_model(99), CFG, tmp_path / "cut", progress=False)
    history = resumed.fit(data)
    assert resumed.start_epoch == 2
    assert [h["total"] for h in history] == [h["total"] for h in full_history]
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


def test_same_seed_same_losses_on_cpu():
    data = _tiny_data()
    a = Trainer(_model(0), CFG, progress=False).fit(data)
    b = Trainer(_model(0), CFG, progress=False).fit(data)
    assert a == b


def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
    data = _tiny_data()
    trainer = Trainer(_model(0), TrainConfig(epochs=3, warmup_epochs=0, batch_size=8), tmp_path, progress=False)
    trainer.fit(data)  # three good epochs checkpointed
    bad = _tiny_data()
    bad.y[:] = math.nan
    bad.y_known[:] = True
    again = Trainer(_model(0), TrainConfig(epochs=5, warmup_epochs=0, batch_size=8), tmp_path, progress=False)
    with pytest.raises(TrainingDiverged, match="lower train.lr"):
        again.fit(bad)
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2


def test_losses_fall_during_training():
    data = _tiny_data(n_normal=48)
    history = Trainer(_model(0), TrainConfig(epochs=6, warmup_epochs=0, batch_size=16), progress=False).fit(data)
    assert history[-1]["recon"] < history[0]["recon"]
