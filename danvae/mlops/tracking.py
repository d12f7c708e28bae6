"""Where MLflow runs go, and what a failing tracking server looks like from here.

    configure_tracking()                      # MLFLOW_TRACKING_URI, else sqlite:///<project>/mlflow.db
    experiment_id = get_or_create_experiment("danvae")

What a training run records: :mod:`danvae.mlops.runs`.

Where runs go (:func:`configure_tracking`): ``MLFLOW_TRACKING_URI`` when set (an
``mlflow server``, or Postgres + object store behind one); otherwise the embedded
default ``sqlite:///<project root>/mlflow.db``. With a sqlite store, an experiment
this module creates keeps its artifacts in ``mlartifacts/<experiment>`` beside the
database file (git-ignored, like ``mlflow.db``); with a server, the server decides.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException


DEFAULT_EXPERIMENT = "danvae"
DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"


# ---- where runs go ------------------------------------------------------------------


def project_root() -> Path:
    """The folder holding ``pyproject.toml`` above this package, else the working directory."""
    pkg_parent = Path(__file__).resolve().parents[2]
    return pkg_parent if (pkg_parent / "pyproject.toml").is_file() else Path.cwd().resolve()


def default_tracking_uri(root: str | Path | None = None) -> str:
    """``sqlite:///<root>/mlflow.db`` (absolute), ``root`` defaulting to the project root."""
    base = Path(root).resolve() if root is not None else project_root()
    return f"sqlite:///{base / DB_FILE}"


def resolve_tracking_uri(uri: str | None = None, *, root: str | Path | None = None) -> str:
    """An explicit ``uri``, else ``MLFLOW_TRACKING_URI``, else the embedded sqlite default."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(root)


# MLflow's own defaults (7 retries with backoff, 120 s timeout) make one call to a server
# that is down take minutes before it fails; these fail within ~30 s. Set any of them in
# the environment to override.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def configure_tracking(uri: str | None = None, *, root: str | Path | None = None) -> str:
    """Point MLflow (tracking and, unless ``MLFLOW_REGISTRY_URI`` says otherwise, the
    registry) at :func:`resolve_tracking_uri` and return that URI.

    Idempotent. MLflow exports the URI as ``MLFLOW_TRACKING_URI`` so subprocesses
    (``mlflow models serve``) inherit it. HTTP retries and timeouts: :data:`HTTP_DEFAULTS`.
    """
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    resolved = resolve_tracking_uri(uri, root=root)
    if resolved.startswith("sqlite:///"):
        db = sqlite_path(resolved)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(resolved)
    return resolved


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative paths from the working directory)."""
    if not uri.startswith("sqlite:///"):
        return None
    raw = uri[len("sqlite:///"):].split("?", 1)[0]
    if not raw or raw == ":memory:":
        return None
    return Path(raw).resolve() if raw.startswith("/") else (Path.cwd() / raw).resolve()


def artifact_location(experiment: str, uri: str | None = None) -> str | None:
    """Where a new experiment keeps artifacts: ``<db folder>/mlartifacts/<experiment>`` for a
    sqlite store; None (the server's choice) for anything else."""
    db = sqlite_path(uri or mlflow.get_tracking_uri())
    if db is None:
        return None
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", experiment) or "default"
    return (db.parent / ARTIFACTS_DIR / safe).as_uri()


def get_or_create_experiment(name: str = DEFAULT_EXPERIMENT, client: MlflowClient | None = None) -> str:
    """The id of experiment ``name``, created (artifacts beside a sqlite store) or restored if needed."""
    client = client or MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location(name))
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
            exp = client.get_experiment_by_name(name)  # another process created it meanwhile
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


class TrackingError(RuntimeError):
    """The tracking store could not be reached or refused a write; the message is one line."""


def tracking_failures() -> tuple[type[BaseException], ...]:
    """The exceptions an unreachable or failing tracking store raises."""
    failures: list[type[BaseException]] = [MlflowException, OSError]
    try:
        import requests

        failures.append(requests.RequestException)
    except ImportError:  # pragma: no cover - requests ships with mlflow
        pass
    return tuple(failures)


SECRET_QUERY_KEYS = ("token", "password", "passwd", "secret", "key", "signature", "credential")


def portable_uri(uri: str, root: str | Path) -> str:
    """A ``sqlite:///`` store inside ``root`` as a path relative to it (``sqlite:///mlflow.db``),
    so a file committed with it names no machine's folders; any other URI unchanged."""
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        path = Path(uri[len(prefix):])
        try:
            return prefix + path.resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            return uri
    return uri


def redact_uri(uri: str) -> str:
    """``uri`` fit for logs and files: a user and password in it, and query values that look
    like secrets (``token=…``, ``X-Amz-Signature=…``), become ``***``."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "***"
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    secret = [any(w in k.lower() for w in SECRET_QUERY_KEYS) for k, _ in pairs]
    if "@" not in parts.netloc and not any(secret):
        return uri  # rebuilt URIs can lose slashes (sqlite:////abs/path): leave clean ones alone
    netloc = "***@" + parts.netloc.rsplit("@", 1)[1] if "@" in parts.netloc else parts.netloc
    query = urlencode([(k, "***" if hide else v) for (k, v), hide in zip(pairs, secret)], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def failure_cause(exc: BaseException) -> str:
    """The gist of an MLflow / HTTP failure in one short line (credentials in URLs redacted)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = re.sub(r"(?<=://)[^/\s@]+@", "***@", text)
    if "Connection refused" in text or "NewConnectionError" in text or "Max retries exceeded" in text:
        return f"the tracking server at {redact_uri(mlflow.get_tracking_uri())} is not reachable"
    if "Read timed out" in text or "ReadTimeout" in text:
        return "the tracking server did not answer in time"
    return text if len(text) <= 240 else text[:239] + "…"


@contextmanager
def quiet_downloads() -> Iterator[None]:
    """No artifact-download progress bars from MLflow inside the block (restored afterwards)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before
