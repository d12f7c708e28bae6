"""The registry helpers the flow tests judge "champion unchanged" and "no new version" by:
they read a real sqlite registry, and raise when it cannot be read instead of reporting an
empty registry."""
from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.orchestration.conftest import MODEL, champion, versions
from tests.pipeline.conftest import Repo


@pytest.fixture(scope="module")
def registry_db(tmp_path_factory) -> Path:
    """A sqlite registry: ``MODEL`` with versions 1 and 2 (champion = 2), ``no-alias`` with none."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("registry")
    (root / "artifacts").mkdir()
    db = root / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    client.create_registered_model(MODEL)
    for _ in range(2):
        client.create_model_version(MODEL, source=str(root / "artifacts"), await_creation_for=0)
    client.set_registered_model_alias(MODEL, "champion", "2")
    client.create_registered_model("no-alias")
    return db


def _repo_with(db: Path, dest: Path) -> Repo:
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(db, dest / "mlflow.db")
    return Repo(dest)


def _newer_schema(db: Path) -> None:
    with sqlite3.connect(db) as con:
        con.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")


def _tables_lost(db: Path) -> None:
    with sqlite3.connect(db) as con:
        con.execute("DROP TABLE registered_model_aliases")
        con.execute("DROP TABLE model_versions")


def test_helpers_read_versions_and_champion(registry_db, tmp_path):
    """A readable registry: the versions and the aliased one; None/[] only for what is absent."""
    repo = _repo_with(registry_db, tmp_path)
    assert versions(repo) == [1, 2]
    assert champion(repo) == 2
    assert champion(repo, "no-alias") is None
    assert versions(repo, "not-registered") == [] and champion(repo, "not-registered") is None


@pytest.mark.parametrize("damage", [_newer_schema, _tables_lost], ids=["newer-schema", "tables-lost"])
@pytest.mark.parametrize("helper", [versions, champion], ids=["versions", "champion"])
def test_an_unreadable_registry_raises(registry_db, tmp_path, damage: Callable[[Path], None],
                                       helper: Callable[[Repo], object]):
    """A registry MLflow cannot read is an error, so "champion unchanged" (None == None) and "no
    new version" ([] == []) cannot hold by accident."""
    from mlflow.exceptions import MlflowException

    repo = _repo_with(registry_db, tmp_path)
    damage(repo.path / "mlflow.db")
    with pytest.raises(MlflowException):
        helper(repo)


@pytest.mark.parametrize("helper", [versions, champion], ids=["versions", "champion"])
def test_a_missing_registry_raises_and_is_not_created(tmp_path, helper: Callable[[Repo], object]):
    """No registry file where the flows should have written one: an error, and no empty
    registry is left behind."""
    repo = Repo(tmp_path)
    with pytest.raises(FileNotFoundError, match="no MLflow registry"):
        helper(repo)
    assert not (tmp_path / "mlflow.db").exists()
