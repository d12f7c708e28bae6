"""The training loop: the reference schedule, β warm-up, checkpoints and exact resume.

    data = TrainingData.from_arrays(images, brightness, is_anomaly, sup_ratio=0.5, seed=0)
    history = Trainer(model, TrainConfig(epochs=30), run_dir="runs/a").fit(data)

Schedule: the first ``warmup_epochs`` epochs see normal images only while β_x and β_y
ramp linearly from 0; after that, each epoch first runs the labelled-anomaly batches
with the decoder frozen (anomalies shape the encoders only), then the normal batches.
Each epoch is seeded from (seed, epoch), so a run resumed from its checkpoint
continues exactly as the uninterrupted run would have.
"""
from danvae.train.data import TrainingData
from danvae.train.schedule import default_alpha, learning_rate, loss_weights, selection_start, warmup_factor
from danvae.train.trainer import LOSS_TERMS, DeviceUnavailable, Trainer, TrainingDiverged, frozen, pick_device

__all__ = [
    "LOSS_TERMS", "DeviceUnavailable", "Trainer", "TrainingData", "TrainingDiverged", "default_alpha", "frozen",
    "learning_rate", "loss_weights", "pick_device", "selection_start", "warmup_factor",
]
