import math

import numpy as np
import pytest
import torch

from danvae.config import ModelConfig, TrainConfig
from danvae.models import build_model
from danvae.holdout import validation_epochs
from danvae.train import Trainer, TrainingData, TrainingDiverged, selection_start
from tests.code.test_models import _tiny_data

CFG = TrainConfig(epochs=4, warmup_epochs=2, batch_size=8, seed=3)


def _model(seed: int):
    torch.manual_seed(seed)
    return build_model(ModelConfig(zx_dim=4, zy_dim=2), 3, 32)


def _labelled_data(n: int, anomalies: int, seed: int, rows: slice, cols: slice, masks: bool = True) -> TrainingData:
    """``n`` random 32-px images, the last ``anomalies`` of them labelled, with a box mask there."""
    rng = np.random.default_rng(seed)
    imgs = rng.integers(60, 200, (n, 32, 32, 3), dtype=np.uint8)
    anomaly = np.arange(n) >= n - anomalies
    box = np.zeros((n, 32, 32), bool)
    box[n - anomalies:, rows, cols] = True
    return TrainingData.from_arrays(imgs, np.full(n, 0.5), anomaly, masks=box if masks else None)


def _record_batches(trainer: Trainer) -> list:
    """The batches ``trainer`` steps on from now, in order."""
    seen, step = [], trainer._step
    trainer._step = lambda batch, *a: seen.append(batch) or step(batch, *a)
    return seen


@pytest.mark.parametrize("crop, average, crash", [(None, {}, 2), (16, {}, 2), (16, {"ema_decay": 0.9}, 2),
                                                  (16, {"swa": True}, 3)], ids=["whole-images", "crops", "ema", "swa"])
def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, crop, average, crash):
    """With synthetic defects, relighting and (here) random crops all drawn from the epoch's seed,
    and the average of the weights carried in the checkpoint (swa: one epoch averaged before the crash)."""
    cfg = CFG.model_copy(update={"crop": crop, **average})
    data = _tiny_data()
    full = Trainer(_model(0), cfg, tmp_path / "full", progress=False)
    full_history = full.fit(data)

    interrupted = Trainer(_model(0), cfg, tmp_path / "cut", progress=False)
    original = interrupted._step

    def crashing_step(batch, weights, epoch):
        if epoch == crash:
            raise KeyboardInterrupt
        return original(batch, weights, epoch)

    interrupted._step = crashing_step
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(data)

    # A new process: a differently initialised model, restored from the checkpoint.
    resumed = Trainer(_model(99), cfg, tmp_path / "cut", progress=False)
    history = resumed.fit(data)
    assert resumed.start_epoch == crash
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
    from danvae.data.synthetic import DIFFICULTIES, render_surface

    rng = np.random.default_rng(0)
    imgs = np.stack([render_surface(rng, 32, "wood", None, 0.9, DIFFICULTIES["easy"]).image for _ in range(48)])
    data = TrainingData.from_arrays(imgs, imgs.max(-1).mean((1, 2)) / 255.0, np.zeros(48, bool), 0.5, 0)
    history = Trainer(_model(0), TrainConfig(epochs=6, warmup_epochs=0, batch_size=16), progress=False).fit(data)
    assert history[-1]["recon"] < history[0]["recon"]
    assert history[-1]["total"] < history[0]["total"]


def test_labelled_anomalies_train_on_crops_that_keep_their_defect():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (6, 64, 64, 3), dtype=np.uint8)
    masks = np.zeros((6, 64, 64), bool)
    for i, (r, c) in enumerate([(2, 2), (60, 60), (30, 5), (5, 58), (40, 40), (20, 33)]):
        masks[i, max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] = True
    data = TrainingData.from_arrays(imgs, np.full(6, 0.5), np.ones(6, bool), masks=masks)
    trainer = Trainer(_model(0), TrainConfig(epochs=1, warmup_epochs=0, crop=32), progress=False)
    batch = trainer.augmenter.crop_around_defects(trainer._batch(data, torch.arange(6)), torch.Generator().manual_seed(0))
    assert batch.x.shape == (6, 3, 32, 32) and batch.mask.shape == (6, 32, 32)
    assert (batch.mask.flatten(1).sum(dim=1) == torch.from_numpy(masks).flatten(1).sum(dim=1)).all()


@pytest.mark.parametrize("on_disk", [False, True])
def test_the_best_validation_epoch_is_kept(tmp_path, on_disk):
    data = _tiny_data()
    scores = iter([0.99, 0.6, 0.9, 0.7])  # epochs 1-2 (warm-up, first half) do not count
    snapshots = []

    def validation(epoch, record):
        snapshots.append([p.detach().clone() for p in trainer.model.parameters()])
        return {"val_auroc": next(scores)}

    cfg = TrainConfig(epochs=4, warmup_epochs=1, batch_size=8, seed=3)
    trainer = Trainer(_model(0), cfg, tmp_path if on_disk else None, progress=False, on_epoch_end=validation)
    trainer.fit(data)
    assert trainer.best_epoch == 3
    assert all(torch.equal(a, b) for a, b in zip(snapshots[2], trainer.model.parameters()))
    off = Trainer(_model(0), cfg.model_copy(update={"keep_best": False}), progress=False,
                  on_epoch_end=lambda e, r: {"val_auroc": 0.5})
    off.fit(data)
    assert off.best_epoch is None


def test_validation_thins_out_only_before_the_epochs_keep_best_chooses_from():
    long = TrainConfig(epochs=60, warmup_epochs=8)
    due = validation_epochs(long)
    start = selection_start(long)
    assert start == 30
    assert {e for e in due if e >= start} == {e for e in range(start, 60) if (e + 1) % 3 == 0}
    assert {e for e in due if e < start} == {5, 11, 17, 23, 29}
    assert validation_epochs(TrainConfig(epochs=3, warmup_epochs=1)) == {0, 1, 2}  # short runs keep every point
    assert 6 in validation_epochs(TrainConfig(epochs=7, warmup_epochs=0))  # the last epoch always


@pytest.mark.parametrize("damage", ["truncated", "other-model"])
def test_an_unusable_checkpoint_is_set_aside_and_training_starts_afresh(tmp_path, damage):
    data = _tiny_data()
    cfg = TrainConfig(epochs=2, warmup_epochs=0, batch_size=8, seed=3)
    Trainer(_model(0), cfg, tmp_path, progress=False).fit(data)
    last = tmp_path / "checkpoints" / "last.pt"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[:200])
    else:
        other = Trainer(build_model(ModelConfig(zx_dim=6, zy_dim=2), 3, 32), cfg, tmp_path / "other", progress=False)
        other.save_checkpoint(0)
        last.write_bytes((tmp_path / "other" / "checkpoints" / "last.pt").read_bytes())
    again = Trainer(_model(0), cfg, tmp_path, progress=False)
    history = again.fit(data)
    assert again.start_epoch == 0 and len(history) == 2
    assert (tmp_path / "checkpoints" / "last.pt.unusable").exists()
    fresh = Trainer(_model(0), cfg, progress=False).fit(data)
    assert [h["total"] for h in history] == [h["total"] for h in fresh]


def test_labelled_defects_are_transplanted_onto_training_normals_only_when_masks_are_known():
    rng = np.random.default_rng(1)
    imgs = rng.integers(60, 200, (10, 32, 32, 3), dtype=np.uint8)
    masks = np.zeros((10, 32, 32), bool)
    masks[8:, 10:14, 3:25] = True  # two labelled anomalies with a 4×22 streak
    anomaly = np.arange(10) >= 8
    imgs[masks] = 5
    cfg = TrainConfig(epochs=1, warmup_epochs=0, crop=None)
    cfg = cfg.model_copy(update={"synthetic": cfg.synthetic.model_copy(update={"share": 1.0, "transplant": 1.0})})
    with_masks = TrainingData.from_arrays(imgs, np.full(10, 0.5), anomaly, masks=masks)
    trainer = Trainer(_model(0), cfg, progress=False)
    trainer.augmenter.bank = trainer.augmenter.defect_bank(with_masks)
    assert len(trainer.augmenter.bank) == 2
    batch = trainer.augmenter.augment_normals(trainer._batch(with_masks, torch.arange(8)), torch.Generator().manual_seed(0))
    sizes = batch.mask.flatten(1).sum(1)
    assert (sizes == 4 * 22).all(), "every normal got a real streak (maybe turned), not a synthetic defect"
    assert batch.drawn.all(), "a transplanted mask is a hand-drawn one"
    assert trainer._batch(with_masks, torch.arange(10)).drawn.tolist() == anomaly.tolist()
    synthetic = cfg.model_copy(update={"synthetic": cfg.synthetic.model_copy(update={"share": 1.0, "transplant": 0.0})})
    trainer = Trainer(_model(0), synthetic, progress=False)
    batch = trainer.augmenter.augment_normals(trainer._batch(with_masks, torch.arange(8)), torch.Generator().manual_seed(0))
    assert batch.mask.any() and not batch.drawn.any(), "a synthetic defect's mask is exact"
    assert Trainer(_model(0), cfg, progress=False).augmenter.defect_bank(
        TrainingData.from_arrays(imgs, np.full(10, 0.5), anomaly)) is None


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_labelled_anomalies_are_relit_in_the_anomaly_phase_as_configured(share):
    data = _labelled_data(12, 4, 2, slice(4, 9), slice(6, 20))
    cfg = TrainConfig(epochs=1, warmup_epochs=0, crop=None, anomaly_repeats=1, batch_size=4)
    cfg = cfg.model_copy(update={"lighting": cfg.lighting.model_copy(update={"anomaly_share": share})})
    trainer = Trainer(_model(0), cfg, progress=False)
    seen = _record_batches(trainer)
    trainer.run_epoch(data, 0)
    anomalous = [b for b in seen if b.anomaly.all()]
    assert len(anomalous) == 1
    b = anomalous[0]
    original = data.images[torch.nonzero(data.anomaly).flatten()].float().div(255)
    unchanged = [any(torch.equal(x, o) for o in original) for x in b.x]
    if share == 0:
        assert all(unchanged), "anomalies pass unchanged"
    else:
        assert not any(unchanged) and not any(torch.allclose(x, o, atol=0.02) for x in b.x for o in original)
        assert torch.allclose(b.y, b.x.amax(dim=1).flatten(1).mean(dim=1)), "the brightness label is measured anew"
    assert (b.mask.flatten(1).sum(1) == 5 * 14).all(), "the masks are untouched"


def test_the_moving_average_is_what_is_validated_kept_and_shipped(tmp_path):
    """With ``ema_decay`` the validation callback sees the average of the weights, not the last
    step's, the training weights come back after it, and fit() ends with the average."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    data = _tiny_data()
    cfg = TrainConfig(epochs=3, warmup_epochs=1, batch_size=8, seed=3, ema_decay=0.8, keep_best=False)
    seen = []

    def validation(epoch, record):
        seen.append([p.detach().clone() for p in trainer.model.parameters()])
        return {"val_auroc": 0.5}

    trainer = Trainer(_model(0), cfg, tmp_path, progress=False, on_epoch_end=validation)
    # a shadow average, updated after every step as the trainer's own should be
    shadow = AveragedModel(trainer.model, multi_avg_fn=get_ema_multi_avg_fn(0.8))
    live_after_epoch = []
    step, run_epoch = trainer._step, trainer.run_epoch

    def tracked_step(batch, weights, epoch):
        out = step(batch, weights, epoch)
        shadow.update_parameters(trainer.model)
        return out

    def tracked_epoch(data, epoch):
        record = run_epoch(data, epoch)
        live_after_epoch.append([p.detach().clone() for p in trainer.model.parameters()])
        return record

    trainer._step, trainer.run_epoch = tracked_step, tracked_epoch
    trainer.fit(data)
    final = list(trainer.model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(shadow.module.parameters(), final))  # shipped: the average
    assert any(not torch.equal(a, b) for a, b in zip(live_after_epoch[-1], final))  # ... not the last step
    assert all(torch.equal(a, b) for a, b in zip(seen[-1], final))  # validated: the average
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    live = dict(zip([n for n, _ in trainer.model.named_parameters()], live_after_epoch[-1]))
    assert all(torch.equal(saved["model"][n], p) for n, p in live.items())  # the checkpoint resumes training ...
    average = dict(zip(live, shadow.module.parameters()))
    assert all(torch.equal(saved["ema"][f"module.{n}"], p) for n, p in average.items())  # ... and the average


def test_head_weight_decay_shrinks_the_anomaly_head_only():
    model = build_model(ModelConfig(zx_dim=4, zy_dim=2), 3, 32)
    cfg = TrainConfig(head_weight_decay=0.5, lr=1e-3)
    trainer = Trainer(model, cfg, progress=False)
    decayed, plain = trainer.optimizer.param_groups
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    assert (decayed["weight_decay"], plain["weight_decay"]) == (0.5, 0.0)
    assert {id(p) for p in decayed["params"]} == {id(p) for p in model.head.parameters()}
    assert isinstance(Trainer(build_model(ModelConfig(zx_dim=4, zy_dim=2), 3, 32), TrainConfig(), progress=False)
                      .optimizer, torch.optim.Adam)
    # with no gradient at all, only the decay moves a weight: the head's shrink by lr × decay, the rest stay
    head_before = [p.detach().clone() for p in model.head.parameters()]
    rest_before = [p.detach().clone() for p in model.decoder.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    trainer.optimizer.step()
    assert all(torch.allclose(p, b * (1 - 1e-3 * 0.5)) for p, b in zip(model.head.parameters(), head_before))
    assert all(torch.equal(p, b) for p, b in zip(model.decoder.parameters(), rest_before))


@pytest.mark.parametrize("how", ["phase", "interleaved"])
def test_anomaly_steps_run_first_or_spread_over_the_epoch_with_the_decoder_frozen(how):
    data = _labelled_data(30, 8, 4, slice(3, 10), slice(5, 12))
    cfg = TrainConfig(epochs=1, warmup_epochs=0, crop=16, anomaly_repeats=2, batch_size=4, anomaly_steps=how,
                      anomaly_budget=None)
    trainer = Trainer(_model(0), cfg, progress=False)
    kinds, step = [], trainer._step

    def recording_step(batch, *a):
        decoder = [p.detach().clone() for p in trainer.model.decoder.parameters()]
        out = step(batch, *a)
        unchanged = all(torch.equal(p, q) for p, q in zip(decoder, trainer.model.decoder.parameters()))
        kinds.append(bool(batch.anomaly.all()))
        assert unchanged == kinds[-1], "the decoder learns on normal batches only"
        return out

    trainer._step = recording_step
    trainer.run_epoch(data, 0)
    assert kinds.count(True) == 4 and kinds.count(False) == 6  # 2 passes over 8 anomalies; 22 normals
    order = "".join("A" if k else "N" for k in kinds)
    assert order == ("AAAANNNNNN" if how == "phase" else "NANANNANAN")  # interleaved: by the middle of each slot


def test_outside_mask_reconstruction_ignores_a_labelled_defect_s_pixels():
    """``anomaly_recon: outside_mask``: the anomaly batches carry their defect mask as unknown
    pixels, and no change of the image there moves the reconstruction term."""
    from danvae.models.base import Batch

    data = _labelled_data(20, 4, 5, slice(10, 16), slice(12, 20))
    for recon, carries in (("all", False), ("outside_mask", True)):
        cfg = TrainConfig(epochs=1, warmup_epochs=0, crop=16, anomaly_repeats=1, batch_size=4, anomaly_recon=recon)
        trainer = Trainer(_model(0), cfg, progress=False)
        seen = _record_batches(trainer)
        trainer.run_epoch(data, 0)
        anomalous = [b for b in seen if b.anomaly.all()]
        assert len(anomalous) == 1 and all(b.unknown is None for b in seen if not b.anomaly.any())
        b = anomalous[0]
        assert (b.unknown is not None) == carries
        if carries:
            assert torch.equal(b.unknown, b.mask) and b.unknown.any()

    model = _model(1)
    x = torch.rand(2, 3, 32, 32)
    unknown = torch.zeros(2, 32, 32, dtype=torch.bool)
    unknown[:, 8:14, 8:14] = True
    mu, logvar, extra = model.encode(x)
    x_hat = model.decode_from(mu, extra).detach()

    def recon(image):
        batch = Batch(x=image, y=torch.full((2,), 0.5), y_known=torch.ones(2, dtype=torch.bool),
                      anomaly=torch.ones(2, dtype=torch.bool), unknown=unknown)
        return model._vae_terms(batch, mu, logvar, x_hat, use_dual_prior=False)[0]

    inside, outside = x.clone(), x.clone()
    inside[:, :, 8:14, 8:14] = 1.0
    outside[:, :, 20:26, 20:26] = 1.0
    assert torch.equal(recon(inside), recon(x)) and not torch.allclose(recon(outside), recon(x))


def test_swa_validates_keeps_and_ships_the_mean_of_the_second_half_s_epoch_end_weights():
    cfg = TrainConfig(epochs=4, warmup_epochs=1, batch_size=8, seed=3, swa=True, keep_best=False)
    trainer = Trainer(_model(0), cfg, progress=False)
    ends, run_epoch = [], trainer.run_epoch

    def recording(data, epoch):
        record = run_epoch(data, epoch)
        ends.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
        return record

    seen = []
    trainer.run_epoch = recording
    trainer.on_epoch_end = lambda epoch, record: seen.append(
        {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}) or {}
    trainer.fit(_tiny_data())
    assert selection_start(cfg) == 2
    name = next(n for n, p in trainer.model.named_parameters() if p.ndim == 4)
    mean = (ends[2][name] + ends[3][name]) / 2
    assert torch.equal(seen[0][name], ends[0][name]) and torch.equal(seen[1][name], ends[1][name])  # not begun
    assert torch.equal(seen[2][name], ends[2][name]) and torch.allclose(seen[3][name], mean, atol=1e-6)
    assert torch.allclose(trainer.model.state_dict()[name], mean, atol=1e-6)  # shipped
    assert not torch.allclose(mean, ends[3][name])
    with pytest.raises(ValueError, match="swa or ema_decay"):
        TrainConfig(swa=True, ema_decay=0.99)


def test_the_anomaly_budget_cuts_the_passes_over_many_labelled_anomalies():
    from danvae.train.schedule import anomaly_passes

    cfg = TrainConfig(anomaly_repeats=4, anomaly_budget=0.5)
    assert anomaly_passes(cfg, 48, 480) == 4 and anomaly_passes(cfg, 96, 480) == 2
    assert anomaly_passes(cfg, 16, 480) == 4 and anomaly_passes(cfg, 144, 480) == 1
    assert anomaly_passes(cfg, 400, 100) == 1  # at least one pass
    assert anomaly_passes(cfg.model_copy(update={"anomaly_budget": None}), 144, 480) == 4

    data = _labelled_data(30, 10, 6, slice(0), slice(0), masks=False)  # 20 normals, 10 anomalies
    for budget, passes in ((None, 3), (1.0, 2)):
        trainer = Trainer(_model(0), TrainConfig(epochs=1, warmup_epochs=0, crop=None, anomaly_repeats=3,
                                                 batch_size=10, anomaly_budget=budget), progress=False)
        seen = _record_batches(trainer)
        trainer.run_epoch(data, 0)
        assert sum(int(b.anomaly.sum()) for b in seen) == 10 * passes
