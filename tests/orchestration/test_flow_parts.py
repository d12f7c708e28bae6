"""The small parts of the flows: failure classification, new-image detection, the retrain lock."""
from __future__ import annotations

import fcntl
import os

import pandas as pd
import pytest
from PIL import Image

from pipelines.dvc_runner import StageFailed, ValidationStageFailed, stage_failure
from pipelines.flows import LOCK_FILE, _transient, find_new_images, retrain
from tests.orchestration.conftest import add_incoming, new_repo


def test_a_failed_validation_is_final_and_a_lock_clash_is_transient():
    from prefect.states import Failed

    val = stage_failure("validate", ["Running stage 'validate':", "validate: FAILED: brightness drift (KS p=1e-9)"], 1)
    assert isinstance(val, ValidationStageFailed) and not val.retriable
    assert val.message == "validate: FAILED: brightness drift (KS p=1e-9)"
    user = stage_failure("train", ["train: error: no normal images in the train split"], 1)
    assert type(user) is StageFailed and not user.retriable and "no normal images" in user.message
    lock = stage_failure("train", ["ERROR: Unable to acquire lock. Most likely another DVC process is running"], 255)
    assert lock.retriable and "Unable to acquire lock" in lock.message
    killed = stage_failure("train", ["Running stage 'train':"], -9)
    assert killed.retriable and "signal 9" in killed.message
    assert _transient(None, None, Failed(data=lock)) is True
    assert _transient(None, None, Failed(data=val)) is False
    assert _transient(None, None, Failed(data=OSError("disk hiccup"))) is True


def test_new_images_are_content_hashes_not_in_the_manifest(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    incoming = tmp_path / "data" / "incoming"
    incoming.mkdir(parents=True)
    assert find_new_images(tmp_path) == []
    Image.new("RGB", (8, 8), (10, 20, 30)).save(incoming / "a.png")
    (incoming / "notes.txt").write_text("not an image")
    assert find_new_images(tmp_path) == ["data/incoming/a.png"]
    # a file an earlier ingest refused is not new until it changes
    (incoming / "broken.png").write_bytes(b"not a png")
    (tmp_path / "data" / "quarantine.csv").write_text(
        "path,reason,batch,seen_at\ndata/incoming/broken.png,cannot read image,b1,2999-01-01T00:00:00+00:00\n")
    assert find_new_images(tmp_path) == ["data/incoming/a.png"]


def test_a_bad_file_changed_after_quarantine_is_retried_once_not_on_every_run(tmp_path):
    from danvae.data.ingest import ingest

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    incoming = tmp_path / "data" / "incoming"
    incoming.mkdir(parents=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(incoming / "good.png")
    bad = incoming / "broken.png"
    bad.write_bytes(b"not a png")
    os.utime(bad, (9e8, 9e8))  # 1998
    ingest([("incoming", incoming)], tmp_path / "data", 8)
    assert find_new_images(tmp_path) == []
    log = tmp_path / "data" / "quarantine.csv"  # let that first refusal date from 2001
    rows = pd.read_csv(log, dtype=str)
    rows["seen_at"] = rows["file_mtime"] = "2001-09-09T01:46:40+00:00"
    rows.to_csv(log, index=False)
    bad.write_bytes(b"still not a png")  # changed since (2011): worth one more try
    os.utime(bad, (1.3e9, 1.3e9))
    assert find_new_images(tmp_path) == ["data/incoming/broken.png"]
    ingest([("incoming", incoming)], tmp_path / "data", 8, batch="again")  # refused again, same reason
    assert find_new_images(tmp_path) == [], "a file refused again for the same reason must not count as new"


def test_retrain_skips_with_a_message_while_another_holds_the_lock(prefect_server, tmp_path):
    repo = new_repo(tmp_path / "repo")
    add_incoming(repo, seed=3, n_normal=6, n_anomaly=2)
    lock = repo.path / LOCK_FILE
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b'{"pid": 1, "flow_run": "the other one"}')
        state = retrain(project_dir=str(repo.path), if_busy="skip", return_state=True)
    finally:
        os.close(fd)
    assert state.is_completed()
    assert state.message.startswith("skipped: another retrain is running") and "the other one" in state.message
    assert state.result()["status"] == "skipped"
    assert not (repo.path / "data" / "manifest.parquet").exists()  # nothing ran
    # and the slot was given back: the global concurrency limit is free again
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name("danvae-retrain").active_slots == 0


def test_a_folder_that_is_not_the_project_is_named(tmp_path):
    from pipelines.flows import _project

    with pytest.raises(FileNotFoundError, match="no dvc.yaml"):
        _project(tmp_path)


def test_retrain_skips_while_another_run_holds_the_concurrency_slot(prefect_server, tmp_path):
    from prefect.concurrency.sync import concurrency

    from pipelines.flows import RETRAIN_LIMIT

    repo = new_repo(tmp_path / "repo")
    add_incoming(repo, seed=4, n_normal=6, n_anomaly=2)
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(RETRAIN_LIMIT, 1)
    with concurrency(RETRAIN_LIMIT, timeout_seconds=30, strict=True):  # "a retrain on another host"
        state = retrain(project_dir=str(repo.path), if_busy="skip", return_state=True)
    assert state.is_completed()
    assert state.message == f"skipped: another retrain is running (concurrency limit '{RETRAIN_LIMIT}')"
    assert not (repo.path / "data" / "manifest.parquet").exists()
    assert not (repo.path / LOCK_FILE).exists() or (repo.path / LOCK_FILE).read_text() == ""


def test_a_quarantined_symlink_loop_does_not_stop_the_new_image_finder(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    incoming = tmp_path / "data" / "incoming"
    incoming.mkdir(parents=True)
    (incoming / "loop.png").symlink_to("loop.png")  # Path.resolve() raises RuntimeError on it
    Image.new("RGB", (8, 8), (10, 20, 30)).save(incoming / "a.png")
    (tmp_path / "data" / "quarantine.csv").write_text(
        "path,reason,batch,seen_at\ndata/incoming/loop.png,broken symlink,b1,2999-01-01T00:00:00+00:00\n")
    assert find_new_images(tmp_path) == ["data/incoming/a.png"]
    assert find_new_images(tmp_path) == ["data/incoming/a.png"], "the next retrain must not fail either"


def test_the_bad_input_corpus_does_not_stop_the_new_image_finder(bad_corpus, tmp_path):
    """Before ingest every readable image is new (the FIFO is not opened); after it nothing is,
    bad files included, until one of them changes."""
    from danvae.data.ingest import ingest
    from danvae.data.manifest import load_manifest

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    before = find_new_images(tmp_path, incoming="src")
    names = {p.rsplit("/", 1)[-1] for p in before}
    assert set(bad_corpus.good) | set(bad_corpus.duplicates) <= names
    assert "fifo.png" not in names and "loop.png" not in names and "broken_link.png" not in names
    ingest([("incoming", bad_corpus.src)], tmp_path / "data", 16)
    manifest = load_manifest(tmp_path / "data")
    assert len(manifest) == len(bad_corpus.good)
    assert find_new_images(tmp_path, incoming="src") == []
    edited = bad_corpus.src / "text.png"
    edited.write_bytes(b"still not a picture, but changed\n")
    os.utime(edited, (edited.stat().st_atime, edited.stat().st_mtime + 5))
    assert find_new_images(tmp_path, incoming="src") == ["src/text.png"]
    ingest([("incoming", bad_corpus.src)], tmp_path / "data", 16, batch="again")
    assert len(load_manifest(tmp_path / "data")) == len(manifest), "the manifest never shrinks"
    assert find_new_images(tmp_path, incoming="src") == []
