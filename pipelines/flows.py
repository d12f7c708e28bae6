"""Prefect flows: the DVC stages as tasks, training on a work pool, scheduled retraining.

    python -m pipelines.flows                      # the pipeline once (Prefect's temporary local API)
    python -m pipelines.flows retrain              # retrain if data/incoming/ holds new images

    from pipelines.flows import pipeline, retrain
    pipeline(project_dir="/path/to/checkout")      # -> {"stages": ..., "metrics": ..., "promotion": ...}

Flows (names as Prefect shows them):

- ``pipeline``: one task per DVC stage (ingest → validate → train → score → evaluate), each
  ``dvc repro --single-item <stage>`` in the project folder, so DVC decides what is stale and
  the cache and ``dvc.lock`` stay true (a stage DVC skips is reported as skipped); then a
  markdown artifact with ``reports/metrics.json`` and the ``register-and-promote`` task
  (:func:`pipelines.promotion.register_and_promote`: register the model as ``challenger``,
  move ``champion`` only when the gate passes). With ``orchestration.train_pool`` set in
  params, the train stage runs as the ``train-stage/<pool>`` deployment on that work pool
  (a worker on a GPU host) and the flow waits for it.
- ``train-stage``: the train stage alone; deployed as ``train-stage/gpu`` on the ``gpu`` pool.
- ``retrain``: scheduled. New images in ``data/incoming/`` (content sha256 not yet in the
  manifest) → the pipeline flow; none → Completed "no new images", nothing touched. Single
  flight: a Prefect global concurrency limit (``danvae-retrain``, 1 slot) and a file lock
  (``.cache/retrain.lock``) in the project; a second run waits (default) or skips, and says so.

Stage tasks retry transient failures (a killed process, DVC's repo lock held by another
``dvc`` command) with exponential backoff; a failed data validation or a stage's own user
error ("<stage>: error: ...") is never retried and fails the flow with the stage's message.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, Literal

import pipelines  # noqa: F401  (offline/no-telemetry defaults and PREFECT_HOME before prefect loads)

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.states import Completed
from prefect.tasks import exponential_backoff

from pipelines.dvc_runner import STAGES, StageFailed, dvc_stale, run_dvc_stage
from pipelines.env import PROJECT_ROOT
from pipelines.incoming import find_new_images  # noqa: F401 (re-exported)
from pipelines.paths import validation_passed as _validation_passed
from pipelines.single_flight import LOCK_FILE, RETRAIN_LIMIT, SingleFlight  # noqa: F401 (re-exported)
from pipelines.train_pool import TRAIN_FLOW, check_pool_reachable, train_on_pool

NO_NEW_IMAGES = "no new images"
SKIPPED = "Skipped"  # the state name of a stage task whose DVC stage was up to date
STAGE_RETRIES = 2
STAGE_RETRY_DELAYS = exponential_backoff(backoff_factor=10)  # 10 s, 20 s


def _transient(task, task_run, state) -> bool:  # noqa: ANN001 — Prefect's retry_condition_fn signature
    """Retry unless the stage said its failure is deterministic (validation, a user error)."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            state.result()
        except BaseException as raised:  # noqa: BLE001
            exc = raised
    return not (isinstance(exc, StageFailed) and not exc.retriable)


# ----------------------------------------------------------------------------- helpers
def _project(project_dir: str | Path | None) -> Path:
    root = Path(project_dir).expanduser().resolve() if project_dir else PROJECT_ROOT
    if not (root / "dvc.yaml").is_file():
        raise FileNotFoundError(
            f"{root} is not the project (no dvc.yaml there); pass project_dir=<checkout>. A worker on another "
            f"host must see the project at the same path (shared filesystem)")
    return root


def _params(root: Path, params_path: str):
    from danvae.config import load_params

    return load_params(root / params_path)


# ----------------------------------------------------------------------------- tasks
@task(name="dvc-stage", retries=STAGE_RETRIES, retry_delay_seconds=STAGE_RETRY_DELAYS, retry_jitter_factor=0.2,
      retry_condition_fn=_transient, cache_policy=NO_CACHE, persist_result=False)
def stage_task(stage: str, project_dir: str) -> State:
    """One DVC stage; a stage DVC skipped ends in a Completed state named ``Skipped``."""
    logger = get_run_logger()
    result = run_dvc_stage(stage, Path(project_dir), logger)
    logger.info("%s", result["message"])
    return Completed(name=SKIPPED if result["skipped"] else "Completed", message=result["message"], data=result)


def _stage(stage: str, project_dir: str, after: State | None = None) -> State:
    """Run one DVC stage as a task named after it, downstream of ``after`` in the run graph.
    Returns its final state; ``.result()`` gives the stage's record (and raises if it failed)."""
    return stage_task.with_options(name=stage, task_run_name=stage)(
        stage, project_dir, wait_for=[after] if after is not None else None, return_state=True)


def _flatten(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Scalar entries of a metrics dict, nested dicts as dotted keys (lists are plot data: left out)."""
    rows: list[tuple[str, Any]] = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            rows += _flatten(value, f"{prefix}{key}.")
        elif value is None or (isinstance(value, int | float | str) and not isinstance(value, bool)):
            rows.append((f"{prefix}{key}", value))
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


@task(name="metrics-artifact", cache_policy=NO_CACHE, persist_result=False)
def metrics_artifact(project_dir: str, stages: dict[str, dict]) -> dict[str, Any]:
    """A markdown artifact (key ``danvae-metrics``): what each stage did and reports/metrics.json."""
    path = Path(project_dir) / "reports" / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    lines = ["## DAn-VAE pipeline run", "", "| stage | result | seconds |", "| --- | --- | --- |"]
    for name, res in stages.items():
        lines.append(f"| {name} | {'skipped (up to date)' if res.get('skipped') else 'ran'}"
                     f"{' on pool ' + res['pool'] if res.get('pool') else ''} | {res.get('seconds', '')} |")
    lines += ["", "### Test-set metrics (`reports/metrics.json`)", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in _flatten(metrics)]
    create_markdown_artifact("\n".join(lines), key="danvae-metrics",
                             description=f"AUROC {_fmt(metrics.get('auroc'))} on the test set")
    return metrics


def _registry_transient(task, task_run, state) -> bool:  # noqa: ANN001
    """Retry a registry hiccup (registration is safe to rerun), not missing code or bad params."""
    from danvae.config import ParamsError

    return not isinstance(state.data, ImportError | ParamsError | FileNotFoundError)


def promotion_verdict(result: dict[str, Any]) -> str:
    """The gate's decision in words, as it was taken (not just whether the version is champion)."""
    champion = result.get("champion_version")
    return {"promoted": "promoted to champion", "forced": "forced to champion",
            "unchanged": "already the champion",
            "rejected": f"rejected by the gate ({f'champion stays v{champion}' if champion else 'no champion yet'})",
            }.get(result.get("decision"), f"decision {result.get('decision')!r}")


@task(name="register-and-promote", retries=1, retry_delay_seconds=10, retry_condition_fn=_registry_transient,
      cache_policy=NO_CACHE, persist_result=False)
def register_and_promote_task(project_dir: str, params_path: str, validation_passed: bool) -> dict[str, Any]:
    """Register the trained model (alias ``challenger``) and run the gate (``champion`` moves only if not worse)."""
    from pipelines.promotion import register_and_promote

    logger = get_run_logger()
    root = Path(project_dir)
    params = _params(root, params_path)
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    try:  # MLflow exports the URI it was pointed at; keep one project's registry out of the next call
        result = register_and_promote(root, params, validation_passed)  # 3rd positional: validation passed
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    verdict = promotion_verdict(result)
    logger.info("registered %s version %s: %s (%s)", result.get("registered_model"), result.get("version"),
                verdict, result.get("reason", ""))
    create_markdown_artifact(
        "\n".join(["## Model registry", "", "| | |", "| --- | --- |",
                   *[f"| {k} | {_fmt(v) if not isinstance(v, dict | list) else json.dumps(v, default=str)} |"
                     for k, v in result.items()]]),
        key="danvae-promotion", description=f"v{result.get('version')}: {verdict}")
    return result


# ----------------------------------------------------------------------------- flows
@flow(name=TRAIN_FLOW)
def train_stage(project_dir: str | None = None, params_path: str = "params.yaml"):
    """The train stage alone, for a work pool: ``dvc repro --single-item train`` in the project.

    The trainer picks CUDA when this host has it (``train.device: auto``)."""
    root = _project(project_dir)
    _params(root, params_path)  # a bad params file is named here, not deep inside DVC's output
    logger = get_run_logger()
    logger.info("train stage on %s (pid %d) in %s; CUDA_VISIBLE_DEVICES=%s", socket.gethostname(), os.getpid(),
                root, os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
    result = _stage("train", str(root)).result()
    result["host"] = socket.gethostname()
    return Completed(message=result["message"], data=result)


@flow(name="pipeline")
def pipeline(project_dir: str | None = None, params_path: str = "params.yaml", train_timeout_s: float = 6 * 3600):
    """ingest → validate → train (here, or on ``orchestration.train_pool``) → score → evaluate →
    metrics artifact → register and promote. Returns {"stages", "metrics", "promotion", "message"}.

    ``params_path`` (relative to ``project_dir``) is what this flow reads for ``orchestration`` and
    the promotion gate; the DVC stages themselves always read ``params.yaml``."""
    root = _project(project_dir)
    params = _params(root, params_path)
    logger = get_run_logger()
    pool = params.orchestration.train_pool
    if pool:
        check_pool_reachable(pool)  # before any stage runs
    stages: dict[str, dict] = {}
    previous: State | None = None  # each stage waits for the one before: the run graph shows the pipeline
    for stage in STAGES:
        if stage == "train" and pool:
            previous = train_on_pool(pool, str(root), params_path, train_timeout_s,
                                     wait_for=[previous] if previous is not None else None, return_state=True)
        else:
            previous = _stage(stage, str(root), after=previous)
        stages[stage] = previous.result()
    validation_passed = _validation_passed(root)
    metrics = metrics_artifact(str(root), stages)
    promotion = register_and_promote_task(str(root), params_path, validation_passed)
    ran = [s for s, r in stages.items() if not r.get("skipped")]
    message = (f"stages run: {', '.join(ran) or 'none (all up to date)'}; AUROC {_fmt(metrics.get('auroc'))}; "
               f"{promotion.get('registered_model')} v{promotion.get('version')} {promotion_verdict(promotion)}")
    logger.info("%s", message)
    return Completed(message=message, data={"stages": stages, "metrics": metrics, "promotion": promotion,
                                            "message": message})


# ----------------------------------------------------------------------------- retraining
@task(name="find-new-images", cache_policy=NO_CACHE, persist_result=False)
def new_images_task(project_dir: str, incoming: str) -> list[str]:
    new = find_new_images(project_dir, incoming)
    get_run_logger().info("%d new images in %s%s", len(new), incoming,
                          f" (e.g. {', '.join(new[:3])})" if new else "")
    return new


@flow(name="retrain")
def retrain(project_dir: str | None = None, params_path: str = "params.yaml",
            if_busy: Literal["wait", "skip"] = "wait", max_wait_s: float = 6 * 3600):
    """New images in ``data.incoming`` → the pipeline flow (ingest … register, gate); none →
    Completed "no new images" and nothing changes. One retrain at a time (see :class:`SingleFlight`):
    with ``if_busy="wait"`` a second run waits, then looks again (usually finding the images already
    ingested); with ``"skip"`` it ends Completed "skipped: ...".

    Returns {"status": "no new images" | "skipped" | "retrained", "new_images", "waited", ...}."""
    root = _project(project_dir)
    params = _params(root, params_path)
    logger = get_run_logger()
    incoming = params.data.incoming
    new = new_images_task(str(root), incoming)
    if not new:
        stale = dvc_stale(root)
        if stale:  # e.g. an earlier retrain ingested its images, then stopped (validation, a crash)
            note = (f"{NO_NEW_IMAGES}; but the pipeline is not up to date ({', '.join(stale)} changed): an earlier "
                    "run stopped part-way; run the pipeline flow (python -m pipelines.flows) once it is fixed")
            logger.warning("%s", note)
            return Completed(message=note, data={"status": NO_NEW_IMAGES, "new_images": 0, "waited": False,
                                                 "stale": stale})
        logger.info("%s in %s; nothing to do", NO_NEW_IMAGES, incoming)
        return Completed(message=NO_NEW_IMAGES, data={"status": NO_NEW_IMAGES, "new_images": 0, "waited": False})
    with SingleFlight(root, name=RETRAIN_LIMIT, wait=if_busy == "wait", max_wait_s=max_wait_s, logger=logger) as flight:
        if not flight.acquired:
            message = f"skipped: another retrain is running ({flight.holder})"
            logger.info("%s", message)
            return Completed(message=message, data={"status": "skipped", "new_images": len(new), "waited": False,
                                                    "holder": flight.holder})
        logger.info("holding the retrain slot (%s)", " + ".join(flight.mechanisms))
        # looked again whatever `waited` says: another run may have taken the slot and the
        # images between the first look and this one, however briefly this one waited
        new = new_images_task(str(root), incoming)
        if not new:
            who = "waited for another retrain, which" if flight.waited else "another retrain"
            message = f"{NO_NEW_IMAGES} ({who} took them in first)"
            logger.info("%s", message)
            return Completed(message=message, data={"status": NO_NEW_IMAGES, "new_images": 0,
                                                    "waited": flight.waited})
        result = pipeline(project_dir=str(root), params_path=params_path)
    message = f"{len(new)} new images; {result['message']}"
    return Completed(message=message, data={"status": "retrained", "new_images": len(new), "waited": flight.waited,
                                            "pipeline": result, "message": message})


# ----------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.flows", description=(
        "Run a flow once. Without PREFECT_API_URL, Prefect starts a temporary local API (15-25 s)."))
    parser.add_argument("flow", nargs="?", default="pipeline", choices=["pipeline", "retrain", "train-stage"])
    parser.add_argument("--project-dir", default=None, help="the checkout (default: this one)")
    parser.add_argument("--params", default="params.yaml", help="params file, relative to the project")
    parser.add_argument("--if-busy", default="wait", choices=["wait", "skip"], help="retrain: when another runs")
    args = parser.parse_args(argv)
    fn = {"pipeline": pipeline, "retrain": retrain, "train-stage": train_stage}[args.flow]
    kwargs: dict[str, Any] = {"project_dir": args.project_dir, "params_path": args.params}
    if args.flow == "retrain":
        kwargs["if_busy"] = args.if_busy
    try:
        result = fn(**kwargs)
    except Exception as exc:  # noqa: BLE001 — Prefect has logged the traceback; one line for people
        print(f"{args.flow}: FAILED: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
