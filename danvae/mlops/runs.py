"""What a training run records in MLflow, and logging later stages into the same run.

    from danvae.mlops.runs import TrainingRun, log_to_run

    with TrainingRun(params=params_yaml, data_version=manifest_md5) as run:   # experiment "danvae"
        det.fit(images, is_anomaly, on_epoch_end=run.on_epoch_end)             # per-epoch metrics
        info = log_run_model(run, det)   # danvae.mlops.packaging: the pyfunc, in this run
        run.write_run_json("models/run.json")                                  # run id, model URI
    log_to_run(run_id, evaluate_scores(table), [Path("reports/roc.png")])    # score/evaluate stages
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow import MlflowClient
from mlflow.data.pandas_dataset import from_pandas
from mlflow.entities import Metric

from danvae.files import atomic_write
from danvae.mlops.flatten import flatten_metrics, flatten_params
from danvae.mlops.provenance import git_commit, git_dirty
from danvae.mlops.tracking import (DEFAULT_EXPERIMENT, TrackingError, configure_tracking, failure_cause,
                                   get_or_create_experiment, redact_uri, tracking_failures)
from danvae.process import pid_alive

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.models.model import ModelInfo

log = logging.getLogger(__name__)

_BATCH = 1000  # metrics per log_batch call (MLflow's limit)
OWNER_HOST_TAG, OWNER_PID_TAG = "danvae.host", "danvae.pid"


# ---- a training run -----------------------------------------------------------------------


def end_orphaned_runs(experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs of this experiment started on this host by a process that
    no longer exists (a training killed with -9 or a lost machine cannot end its own run).
    Returns their ids; a failure to look is not an error (the new run still starts)."""
    client = mlflow.MlflowClient()
    host, ended = socket.gethostname(), []
    try:
        runs = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=200)
        for run in runs:
            tags = run.data.tags
            pid = tags.get(OWNER_PID_TAG, "")
            if tags.get(OWNER_HOST_TAG) == host and pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
                client.set_terminated(run.info.run_id, status="KILLED")
                client.set_tag(run.info.run_id, "danvae.ended_by", "a later run found its process gone")
                ended.append(run.info.run_id)
    except tracking_failures() as exc:
        log.warning("could not look for runs left RUNNING by killed trainings: %s", failure_cause(exc))
    return ended


class TrainingRun:
    """One MLflow run around a training: params, provenance tags, per-epoch metrics, the model.

    Use as a context manager; the run ends FINISHED, or FAILED when the block raises.
    ``on_epoch_end`` is a ready-made ``Detector.fit(on_epoch_end=...)`` callback (step =
    the 1-based epoch of the record). The Detector adds ``val_auroc`` to an epoch's record
    after the callback returns, so that value is logged on the next call, by
    :meth:`log_history`, :func:`danvae.mlops.packaging.log_run_model`, or when the block ends.
    """

    def __init__(self, experiment: str = DEFAULT_EXPERIMENT, *, run_name: str | None = None,
                 params: Mapping[str, Any] | None = None, data_version: str | None = None,
                 tags: Mapping[str, str] | None = None, tracking_uri: str | None = None,
                 run_id: str | None = None, generated: Iterable[str] = ()):
        self.experiment = experiment
        self.run_name = run_name
        self.params = dict(params or {})
        self.data_version = data_version
        self.tags = dict(tags or {})
        self.tracking_uri = tracking_uri
        self.resume_run_id = run_id
        self.generated = tuple(generated)  # files the pipeline writes: their changes do not make the code dirty
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.model_info: ModelInfo | None = None  # set by danvae.mlops.packaging.log_run_model
        self._logged: set[tuple[str, int]] = set()
        self._pending: tuple[int, dict] | None = None

    # context -------------------------------------------------------------------
    def __enter__(self) -> "TrainingRun":
        self.tracking_uri = configure_tracking(self.tracking_uri)
        tags = {"data_version": self.data_version} if self.data_version else {}
        commit = git_commit()
        if commit:
            tags.update({"git_commit": commit, "mlflow.source.git.commit": commit})
        dirty = git_dirty(ignore=self.generated)
        if dirty is not None:
            tags["git_dirty"] = str(dirty).lower()
        from danvae import __version__

        tags["danvae_version"] = __version__
        tags.update({OWNER_HOST_TAG: socket.gethostname(), OWNER_PID_TAG: str(os.getpid())})
        tags.update({k: str(v) for k, v in self.tags.items()})
        try:
            self.experiment_id = get_or_create_experiment(self.experiment)
            end_orphaned_runs(self.experiment_id)
            active = mlflow.start_run(run_id=self.resume_run_id, experiment_id=self.experiment_id,
                                      run_name=self.run_name if self.resume_run_id is None else None, tags=tags)
        except tracking_failures() as exc:
            raise TrackingError(f"cannot start an MLflow run in experiment '{self.experiment}' at "
                                f"{redact_uri(self.tracking_uri)}: {failure_cause(exc)}") from exc
        self.run_id = active.info.run_id
        try:
            if self.params:
                self.log_params(self.params)
        except BaseException as exc:
            _end_run_quietly("FAILED")
            if isinstance(exc, tracking_failures()):
                raise TrackingError(f"cannot log the params of run {self.run_id}: {failure_cause(exc)}") from exc
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self._flush_pending()
            except BaseException:
                _end_run_quietly("FAILED")
                raise
            mlflow.end_run(status="FINISHED")
        else:
            _end_run_quietly("FAILED")  # never hide the block's own error behind an unreachable server

    def _require_run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("the TrainingRun is not started: use it as `with TrainingRun(...) as run:`")
        return self.run_id

    # params and metrics --------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
        """Log nested params flattened to dotted keys; returns what was logged."""
        flat = flatten_params(params, prefix)
        client = MlflowClient()
        from mlflow.entities import Param

        items = list(flat.items())
        for start in range(0, len(items), 100):
            client.log_batch(self._require_run(), params=[Param(k, v) for k, v in items[start:start + 100]])
        return flat

    def log_dataset(self, table: pd.DataFrame, name: str, source: str, digest: str,
                    context: str = "training") -> None:
        """Record ``table`` (e.g. the manifest) as the run's dataset input: its name, where it
        lives, its digest (the data version) and schema, as MLflow's run page shows them."""
        import warnings

        import mlflow.data

        self._require_run()
        with warnings.catch_warnings():  # MLflow's hints on how it reads a local path and integer columns
            warnings.simplefilter("ignore", UserWarning)
            dataset = from_pandas(table, source=source, name=name, digest=digest)
        mlflow.log_input(dataset, context=context)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> dict[str, float]:
        """Log numeric metrics (flattened; None skipped)."""
        flat = flatten_metrics(metrics)
        if flat:
            _log_batch(MlflowClient(), self._require_run(), flat, step or 0)
        return flat

    def _log_record(self, step: int, record: Mapping[str, Any]) -> None:
        todo = {k: v for k, v in flatten_metrics({k: v for k, v in record.items() if k != "epoch"}).items()
                if (k, step) not in self._logged}
        if todo:
            _log_batch(MlflowClient(), self._require_run(), todo, step)
            self._logged.update((k, step) for k in todo)

    def _flush_pending(self) -> None:
        if self._pending is not None:
            step, record = self._pending
            self._pending = None
            self._log_record(step, record)

    def on_epoch_end(self, epoch: int, record: dict[str, float]) -> None:
        """``Detector.fit`` callback: log the epoch's losses (and the last epoch's val_auroc).

        A tracking failure here does not stop the training: it warns, and what was not logged
        is logged later by :meth:`log_history` / :meth:`log_model` (which do raise)."""
        step = int(record.get("epoch", epoch + 1))
        try:
            self._flush_pending()
            self._log_record(step, record)
        except tracking_failures() as exc:
            import warnings

            warnings.warn(f"epoch {step} metrics not logged yet ({failure_cause(exc)}); "
                          f"they are retried when the model is logged", stacklevel=2)
        self._pending = (step, record)  # the same dict gets val_auroc after we return
        return None

    def log_history(self, history: Iterable[Mapping[str, Any]]) -> None:
        """Log every epoch record not logged yet (e.g. epochs a resumed training skipped)."""
        self._flush_pending()
        for i, record in enumerate(history):
            self._log_record(int(record.get("epoch", i + 1)), record)

    def log_artifacts(self, paths: Iterable[str | Path], artifact_path: str | None = None) -> None:
        _log_paths(MlflowClient(), self._require_run(), paths, artifact_path)

    def summary(self) -> dict[str, Any]:
        """What later stages need: run and experiment ids, tracking URI, model URI/id."""
        info = self.model_info
        return {
            "run_id": self.run_id, "experiment_id": self.experiment_id, "experiment": self.experiment,
            "tracking_uri": redact_uri(self.tracking_uri or ""),
            "model_uri": info.model_uri if info else None,
            "model_id": getattr(info, "model_id", None) if info else None,
            "data_version": self.data_version,
        }

    def write_run_json(self, path: str | Path) -> Path:
        """Write :meth:`summary` as JSON (the train stage's ``models/run.json``)."""
        path = Path(path)
        text = json.dumps(self.summary(), indent=2) + "\n"
        atomic_write(path, lambda tmp: tmp.write_text(text))
        return path


def _end_run_quietly(status: str) -> None:
    try:
        mlflow.end_run(status=status)  # pops the active run before telling the store
    except Exception as exc:  # noqa: BLE001 - the store is unreachable; the original error matters more
        import warnings

        warnings.warn(f"could not mark the MLflow run {status}: {str(exc).splitlines()[0] if str(exc) else exc!r}",
                      stacklevel=3)


# ---- later stages -------------------------------------------------------------------------


def _log_batch(client: MlflowClient, run_id: str, flat: Mapping[str, float], step: int) -> None:
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, int(step)) for k, v in flat.items()]
    for start in range(0, len(metrics), _BATCH):
        client.log_batch(run_id, metrics=metrics[start:start + _BATCH])


def _log_paths(client: MlflowClient, run_id: str, paths: Iterable[str | Path], artifact_path: str | None) -> None:
    files = [Path(p) for p in paths]
    missing = [str(p) for p in files if not p.exists()]
    if missing:
        raise FileNotFoundError(f"cannot log missing artifact(s): {', '.join(missing)}")
    for p in files:
        if p.is_dir():
            sub = f"{artifact_path}/{p.name}" if artifact_path else p.name
            client.log_artifacts(run_id, str(p), artifact_path=sub)
        else:
            client.log_artifact(run_id, str(p), artifact_path=artifact_path)


def log_to_run(run_id: str, metrics: Mapping[str, Any] | None = None, artifacts: Iterable[str | Path] = (), *,
               step: int | None = None, prefix: str = "", artifact_path: str | None = None,
               tracking_uri: str | None = None) -> dict[str, float]:
    """Log a later stage's metrics and files into an existing run (finished runs accept them).

    ``metrics`` is flattened: ``auroc_by_brightness=[...]`` becomes ``auroc_by_brightness_0..4``,
    nested dicts become dotted keys, None and non-numbers are skipped. ``prefix`` names them
    (``prefix="score"`` → ``score.auroc``). Files go to the run's root artifact folder (or
    ``artifact_path``); a folder is logged as a subfolder of its own name. Returns the metrics
    logged.
    """
    configure_tracking(tracking_uri)
    files = [Path(a) for a in artifacts]
    missing = [str(a) for a in files if not a.exists()]
    if missing:
        raise FileNotFoundError(f"cannot log missing artifact(s): {', '.join(missing)}")
    client = MlflowClient()
    flat = flatten_metrics(metrics or {}, prefix)
    try:
        if flat:
            _log_batch(client, run_id, flat, step or 0)
        _log_paths(client, run_id, files, artifact_path)
    except tracking_failures() as exc:
        raise TrackingError(f"cannot log into MLflow run {run_id}: {failure_cause(exc)}") from exc
    return flat


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    """``[(step, value), ...]`` of one metric, by step."""
    return sorted((m.step, m.value) for m in MlflowClient().get_metric_history(run_id, key))
