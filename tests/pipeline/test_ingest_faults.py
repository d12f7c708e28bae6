"""Faults during the ingest stage: killed with -9 part-way, and a disk that fills up. Each ends
in a state a rerun completes, with nothing lost."""
from __future__ import annotations

import errno
import signal
import subprocess
import sys
import time

import pandas as pd

from danvae.data.synthetic import generate_surfaces
from tests.pipeline.conftest import make_repo

INGEST = [sys.executable, "-m", "pipelines.stages.ingest"]


def _folder_repo(tmp_path, n_normal: int):
    """A project whose only source is a folder of generated surfaces (nothing generated at ingest)."""
    src = tmp_path / "line3"
    generate_surfaces(src, n_normal=n_normal, n_anomaly=n_normal // 5, size=64, dark_share=0.15, seed=5)
    repo = make_repo(tmp_path / "repo", {"data": {"sources": [{"type": "folder", "name": "line3", "path": str(src)}],
                                                  "image_size": 64}})
    return repo, src


def _manifest(repo) -> pd.DataFrame:
    return pd.read_parquet(repo.path / "data" / "manifest.parquet")


def _leftovers(repo) -> list[str]:
    store = repo.path / "data" / "store"
    return [str(p) for p in store.rglob("*") if p.is_file() and (".tmp" in p.name or p.stat().st_size == 0)]


def test_ingest_killed_with_minus_9_part_way_loses_nothing_and_a_rerun_completes(tmp_path):
    repo, src = _folder_repo(tmp_path, 600)
    expected = {p.relative_to(src).as_posix() for p in src.rglob("*.png") if "masks" not in p.parts}
    proc = subprocess.Popen(INGEST, cwd=repo.path, env=repo.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = repo.path / "data" / "store"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and sum(1 for _ in store.rglob("*.png")) < 50:
        time.sleep(0.02)
    assert proc.poll() is None, "ingest finished before it could be killed: give it more images"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    rerun = repo.run(*INGEST)
    assert "Traceback" not in rerun.stderr
    manifest = _manifest(repo)
    kept = {p.split("line3/", 1)[-1] for p in manifest["path"]}
    assert kept == expected, f"{len(expected - kept)} images missing after the rerun"
    assert manifest["id"].is_unique
    assert not _leftovers(repo)
    again = repo.run(*INGEST)  # and a third run adds nothing
    assert len(_manifest(repo)) == len(manifest) and "Traceback" not in again.stderr


def test_a_full_disk_stops_ingest_with_one_line_and_the_last_manifest_survives(tmp_path):
    repo, src = _folder_repo(tmp_path, 60)
    repo.run(*INGEST)
    before = _manifest(repo)
    generate_surfaces(repo.path / "data" / "incoming", n_normal=300, n_anomaly=0, size=64, dark_share=0.15, seed=6)
    # ulimit -f: no file may grow past 256 KiB, so the packed images (3.5 MB) cannot be written;
    # CPython ignores SIGXFSZ, so the write fails with EFBIG as on a full disk (ENOSPC)
    full = repo.run("bash", "-c", f"ulimit -f 256; exec {' '.join(INGEST)}", check=False)
    assert full.returncode == 1
    lines = full.stderr.strip().splitlines()
    assert lines[-1].startswith("ingest: failed: no room to write"), full.stderr[-2000:]
    assert "Traceback" not in full.stderr
    assert errno.errorcode[errno.EFBIG] in lines[-1] or "File too large" in lines[-1]
    after_fail = _manifest(repo)
    assert after_fail.equals(before), "the failed ingest changed the manifest"
    assert not _leftovers(repo)

    repo.run(*INGEST)  # space again: the rerun completes
    assert len(_manifest(repo)) == len(before) + 300
