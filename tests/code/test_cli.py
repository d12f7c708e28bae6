"""The danvae command: the happy path on generated data and every bad-input path."""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from danvae.cli import main
from danvae.config import TrainConfig


def danvae(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "danvae.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    assert main(["generate", str(root / "data"), "--normal", "60", "--anomaly", "16", "--size", "32",
                 "--difficulty", "easy", "--seed", "3"]) == 0
    assert main(["train", "--data", str(root / "data"), "--out", str(root / "run"), "--epochs", "2",
                 "--warmup-epochs", "1", "--image-size", "32", "--zx-dim", "8", "--zy-dim", "2"]) == 0
    return root


def test_train_score_evaluate_chain(trained):
    scores, metrics = trained / "scores.csv", trained / "metrics.json"
    assert main(["score", "--model", str(trained / "run"), "--data", str(trained / "data"), "--out", str(scores)]) == 0
    table = pd.read_csv(scores)
    assert list(table.columns[:5]) == ["path", "label", "brightness", "score", "is_anomaly"]
    assert {"kl_zx", "llr_zx", "elbo", "recon", "recon_max"} <= set(table.columns)
    assert len(table) == 76 and set(table["label"]) == {"normal", "anomaly"}
    assert main(["evaluate", "--scores", str(scores), "--out", str(metrics)]) == 0
    result = json.loads(metrics.read_text())
    assert 0 <= result["auroc"] <= 1 and len(result["auroc_by_brightness"]) == 5
    assert "brightness_spearman_normal" in result


def test_flat_folder_is_scored_as_unknown(trained, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in list((trained / "data" / "normal").rglob("*.png"))[:3]:
        (flat / p.name).write_bytes(p.read_bytes())
    assert main(["score", "--model", str(trained / "run"), "--data", str(flat), "--out", str(tmp_path / "s.csv")]) == 0
    assert set(pd.read_csv(tmp_path / "s.csv")["label"]) == {"unknown"}


def test_missing_folder_is_one_line_error(tmp_path):
    out = danvae("train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run"))
    assert out.returncode != 0
    assert "does not exist" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_folder_without_images_is_one_line_error(tmp_path):
    (tmp_path / "normal").mkdir()
    (tmp_path / "normal" / "notes.txt").write_text("hello")
    out = danvae("train", "--data", str(tmp_path), "--out", str(tmp_path / "run"))
    assert out.returncode != 0 and "no images" in out.stderr and "Traceback" not in out.stderr


def test_folder_without_normal_images_is_refused(trained, tmp_path):
    src = trained / "data" / "anomaly"
    for p in list(src.rglob("*.png"))[:4]:
        dest = tmp_path / "d" / "anomaly" / p.parent.name / p.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(p.read_bytes())
    out = danvae("train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "run"))
    assert out.returncode != 0 and "no normal images" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()  # a failed start leaves no run: the corrected rerun is not refused


def test_unreadable_file_is_skipped_and_reported(trained, tmp_path):
    data = tmp_path / "d"
    for p in list((trained / "data" / "normal").rglob("*.png"))[:5]:
        dest = data / "normal" / p.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(p.read_bytes())
    (data / "normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = danvae("score", "--model", str(trained / "run"), "--data", str(data), "--out", str(tmp_path / "s.csv"))
    assert out.returncode == 0, out.stderr
    assert "broken.png" in out.stderr and "Traceback" not in out.stderr
    assert len(pd.read_csv(tmp_path / "s.csv")) == 5


def test_missing_model_and_scores_are_one_line_errors(tmp_path):
    out = danvae("score", "--model", str(tmp_path / "none"), "--data", str(tmp_path), "--out", str(tmp_path / "s.csv"))
    assert out.returncode != 0 and "no trained model" in out.stderr and "Traceback" not in out.stderr
    out = danvae("evaluate", "--scores", str(tmp_path / "none.csv"), "--out", str(tmp_path / "m.json"))
    assert out.returncode != 0 and "does not exist" in out.stderr and "Traceback" not in out.stderr


def test_bad_option_value_is_one_line_error(trained, tmp_path):
    out = danvae("train", "--data", str(trained / "data"), "--out", str(tmp_path / "r"), "--epochs", "0")
    assert out.returncode != 0 and "epochs" in out.stderr and "Traceback" not in out.stderr


def test_train_reads_defect_masks_and_reports_a_bad_one(tmp_path):
    data = tmp_path / "data"
    assert main(["generate", str(data), "--normal", "24", "--anomaly", "8", "--size", "32", "--seed", "5"]) == 0
    masks = sorted((data / "masks").rglob("*.png"))
    assert len(masks) == 8
    masks[0].write_bytes(b"not a png")
    done = danvae("train", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1",
                  "--warmup-epochs", "1", "--image-size", "32")
    assert done.returncode == 0, done.stderr
    assert "(7 defect masks)" in done.stdout
    assert f"mask {masks[0]} is empty or unreadable" in done.stderr and "Traceback" not in done.stderr


def test_the_bad_input_corpus_is_scored_without_a_traceback(trained, bad_corpus, tmp_path, capsys):
    """Every good file of the corpus gets a row, every bad one a 'skipped <path>: <reason>' line."""
    out = tmp_path / "corpus.csv"
    assert main(["score", "--model", str(trained / "run"), "--data", str(bad_corpus.src), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    scored = {p.rsplit("/", 1)[-1] for p in pd.read_csv(out)["path"]}
    assert set(bad_corpus.good) | set(bad_corpus.duplicates) == scored
    skipped = [line for line in err.splitlines() if line.startswith("danvae: skipped ")]
    for name, reason in bad_corpus.bad.items():
        lines = [line for line in skipped if f"/{name}: " in line]  # a name that is not UTF-8 shows as \xNN
        assert lines, f"{name} is not reported as skipped:\n{err}"
        assert reason in lines[0], f"{name}: {lines[0]!r} does not give the reason {reason!r}"


def _train_args(trained, out, *extra: str) -> list[str]:
    return ["train", "--data", str(trained / "data"), "--out", str(out), "--epochs", "2", "--warmup-epochs", "1",
            "--image-size", "32", "--zx-dim", "8", "--zy-dim", "2", *extra]


def test_an_existing_run_is_refused_unless_resumed_with_the_same_settings_or_overwritten(trained, tmp_path, capsys):
    import shutil

    import torch

    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    (run / "notes.txt").write_text("the user's own file")
    before = (run / "detector.pt").read_bytes()

    assert main(_train_args(trained, run, "--seed", "7")) == 2  # a new seed must not silently resume the old run
    assert "already holds a training run" in capsys.readouterr().err
    assert (run / "detector.pt").read_bytes() == before

    assert main(_train_args(trained, run, "--resume", "--lr", "0.002", "--seed", "7")) == 2
    err = capsys.readouterr().err
    assert "train.lr 0.001 → 0.002" in err and "train.seed 0 → 7" in err and len(err.strip().splitlines()) == 1
    assert main(_train_args(trained, tmp_path / "nothing", "--resume")) == 2
    assert "holds no training run" in capsys.readouterr().err

    assert main(_train_args(trained, run, "--resume", "--quiet")) == 0  # same settings: continues (all epochs done)
    assert "resumed from epoch 3" in capsys.readouterr().err

    old_last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert main(_train_args(trained, run, "--overwrite", "--seed", "7", "--lr", "0.002", "--quiet")) == 0
    out = capsys.readouterr()
    assert "resumed" not in out.err and "trained danvae" in out.err and out.out == ""
    assert json.loads((run / "run_config.json").read_text())["train"]["seed"] == 7
    new_last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert any(not torch.equal(old_last[k], new_last[k]) for k in old_last)  # trained afresh with the new seed
    assert (run / "notes.txt").read_text() == "the user's own file"  # --overwrite removes the run's files only


def test_help_shows_defaults_and_quiet_hides_the_progress_bars(trained, tmp_path):
    helped = danvae("train", "--help")
    assert f"--epochs EPOCHS       (default: {TrainConfig().epochs})" in helped.stdout and "(default: 0.001)" in helped.stdout
    assert "--resume" in helped.stdout and "--overwrite" in helped.stdout and "--log-level" in helped.stdout
    loud = danvae("score", "--model", str(trained / "run"), "--data", str(trained / "data"), "--out",
                  str(tmp_path / "a.csv"))
    quiet = danvae("score", "--model", str(trained / "run"), "--data", str(trained / "data"), "--out",
                   str(tmp_path / "b.csv"), "--quiet")
    assert loud.returncode == quiet.returncode == 0
    assert "scoring" in loud.stderr and "reading images" in loud.stderr  # tqdm writes to stderr
    assert "scoring" not in quiet.stderr and "reading images" not in quiet.stderr
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv"))
