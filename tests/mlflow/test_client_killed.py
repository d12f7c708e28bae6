"""The process doing a registration or a promotion is killed with SIGKILL at each step
where the registry holds a partial state; a rerun in a fresh process completes the work,
with no duplicate version, no alias on an incomplete version and no decision tag that
the aliases contradict.

The child is the real code path (``register_version``, the ``danvae promote`` command)
on the embedded sqlite store; a patch in the child makes it kill itself with SIGKILL just
before one registry call, so no ``finally`` or exception handler runs.
"""
from __future__ import annotations

import json

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.mlflow.conftest import train_and_register

pytestmark = pytest.mark.slow

CHILD = textwrap.dedent("""
    import inspect, os, signal, sys
    from mlflow import MlflowClient

    # "<before|after>:<method>:<argument>", e.g. before:set_registered_model_alias:champion
    die_at = os.environ.get("DIE_AT", "")

    def killer(method, param):
        real = getattr(MlflowClient, method)
        def call(self, *args, **kwargs):
            at = f"{method}:{inspect.signature(real).bind(self, *args, **kwargs).arguments[param]}"
            if die_at == f"before:{at}":
                os.kill(os.getpid(), signal.SIGKILL)
            out = real(self, *args, **kwargs)
            if die_at == f"after:{at}":  # the registry did it; the answer is lost
                os.kill(os.getpid(), signal.SIGKILL)
            return out
        setattr(MlflowClient, method, call)

    killer("set_registered_model_alias", "alias")
    killer("set_model_version_tag", "key")
    killer("create_model_version", "name")

    if sys.argv[1] == "register":
        from danvae.mlops.registry import register_version
        mv = register_version(sys.argv[2], sys.argv[3], run_id=sys.argv[4])
        print(mv.version)
    else:
        from danvae.cli import main
        sys.exit(main(sys.argv[1:]))
""")


def _run(tmp_path: Path, uri: str, args: list[str], die_at: str = "") -> subprocess.CompletedProcess:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "DIE_AT": die_at,
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)


def _killed(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def logged(sqlite_default, surfaces):
    root, uri = sqlite_default
    return train_and_register(surfaces, root / "models-killed"), uri


def _versions_from(client, name: str, model_uri: str) -> list[str]:
    from danvae.mlops.registry import MODEL_URI_TAG

    return sorted(str(v.version) for v in client.search_model_versions(f"name='{name}'")
                  if v.tags.get(MODEL_URI_TAG) == model_uri)


@pytest.mark.parametrize("step", ["after:create_model_version", "before:set_registered_model_alias"])
def test_registration_killed_then_rerun(logged, tmp_path, step):
    """Killed once the version exists (before the client learnt its number), or before the
    version gets its ``challenger`` alias: the rerun finds that version again and aliases it."""
    from mlflow import MlflowClient

    trained, uri = logged
    name = f"danvae-killed-{step.split(':')[1].replace('_', '-')}"
    die_at = f"{step}:{name}" if step.endswith("create_model_version") else f"{step}:challenger"
    client = MlflowClient()
    args = ["register", trained.model_uri, name, trained.run_id]
    _killed(_run(tmp_path, uri, args, die_at))
    [version] = _versions_from(client, name, trained.model_uri)  # the registry holds the version ...
    assert "challenger" not in client.get_registered_model(name).aliases  # ... and no alias on it yet

    rerun = _run(tmp_path, uri, args)
    _ok(rerun)
    assert rerun.stdout.strip().splitlines()[-1] == version
    assert _versions_from(client, name, trained.model_uri) == [version]  # reused, not duplicated
    assert client.get_model_version(name, version).status == "READY"
    assert str(client.get_registered_model(name).aliases["challenger"]) == version


@pytest.mark.parametrize("die_at, state", [
    ("before:set_model_version_tag:gate.figures", "reason written, no figures, no alias"),
    ("before:set_registered_model_alias:champion", "figures written, no alias"),
    ("after:set_registered_model_alias:champion", "alias moved, no decision tag"),
])
def test_promotion_killed_then_rerun(logged, surfaces, tmp_path, die_at, state):
    from mlflow import MlflowClient

    from danvae.mlops.registry import register_version

    trained, uri = logged
    name = "danvae-killed-" + state.replace(",", "").replace(" ", "-")
    version = str(register_version(trained.model_uri, name, run_id=trained.run_id).version)
    args = ["promote", "--name", name, "--version", "challenger", "--data", str(surfaces.test_dir), "--min-auroc", "0"]
    client = MlflowClient()

    _killed(_run(tmp_path, uri, args, die_at))
    tags = client.get_model_version(name, version).tags
    champion = client.get_registered_model(name).aliases.get("champion")
    assert "gate.decision" not in tags, state  # never a decision the aliases could contradict
    assert (champion is not None) == (state == "alias moved, no decision tag"), state

    rerun = _run(tmp_path, uri, args)
    _ok(rerun)
    tags = client.get_model_version(name, version).tags
    assert str(client.get_registered_model(name).aliases["champion"]) == version
    assert tags["gate.decision"] == "promoted", (state, tags.get("gate.decision"))
    assert json.loads(tags["gate.figures"])["challenger"]["auroc"] > 0.5
    assert f"champion is now version {version}" in rerun.stderr


def test_a_champion_set_by_hand_gets_no_decision_claimed(logged, surfaces):
    """Completing a lost decision tag relies on the gate's own reason: a version aliased by
    hand, or after a rejected evaluation, is not tagged as promoted by a rerun."""
    from mlflow import MlflowClient

    from danvae.mlops.gate import promote
    from danvae.mlops.registry import register_version

    trained, _ = logged
    client = MlflowClient()
    for name, reason in (("danvae-by-hand", None), ("danvae-rejected-then-by-hand", "rejected: AUROC 0.41 < 0.6")):
        version = str(register_version(trained.model_uri, name, run_id=trained.run_id).version)
        if reason:
            client.set_model_version_tag(name, version, "gate.reason", reason)
        client.set_registered_model_alias(name, "champion", version)
        decision = promote(client, name, version, surfaces.test_images, surfaces.test_labels)
        assert decision.decision == "unchanged" and "written now" not in decision.reason
        assert "gate.decision" not in client.get_model_version(name, version).tags
