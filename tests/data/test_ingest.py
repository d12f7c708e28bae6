"""Folder ingest (danvae.data.ingest): content-addressed store, manifest, packed images, quarantine."""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from danvae.config import FolderSource, SplitShares, SyntheticSource
from danvae.data import store as store_mod
from danvae.data.folders import DataError
from danvae.data.ingest import ingest
from danvae.data.manifest import MANIFEST_COLUMNS, load_images, load_manifest
from danvae.data.sources import materialize_sources
from danvae.data.splits import split_of, split_of_many
from danvae.data.synthetic import generate_surfaces
from danvae.images import read_image

SIZE = 16
SHARES = SplitShares()


def _name(path: str) -> str:
    return os.path.basename(path)


def _snapshot(out: Path) -> dict[str, bytes]:
    return {n: (out / n).read_bytes() for n in ("manifest.parquet", "images.npy", "quarantine.csv", "duplicates.csv")}


@pytest.fixture(scope="module")
def surfaces(tmp_path_factory) -> tuple[Path, Path]:
    """Two disjoint generated sets (different seeds), 16 px, with masks."""
    root = tmp_path_factory.mktemp("surfaces")
    generate_surfaces(root / "a", n_normal=30, n_anomaly=8, size=SIZE, seed=1)
    generate_surfaces(root / "b", n_normal=30, n_anomaly=8, size=SIZE, seed=2)
    return root / "a", root / "b"


# ----------------------------------------------------------------------------- the bad-file corpus
def test_corpus_every_bad_file_quarantined_every_good_file_kept(bad_corpus, tmp_path):
    out = tmp_path / "data"
    result = ingest(bad_corpus.sources(), out, image_size=SIZE, channels=3, split=SHARES, batch="b1")

    manifest = load_manifest(out)
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert sorted(_name(p) for p in manifest["path"]) == sorted(bad_corpus.good)
    assert len(result.added) == len(bad_corpus.good)

    reasons = {_name(p): r for p, r in result.quarantine.itertuples(index=False)}
    for name, expected in bad_corpus.bad.items():
        assert name in reasons, f"{name} was not quarantined"
        assert expected in reasons[name], f"{name}: {reasons[name]!r} does not mention {expected!r}"
        assert "\n" not in reasons[name] and "Traceback" not in reasons[name]
    assert reasons[_name(str(bad_corpus.empty_src))] == "no images in source folder"
    assert reasons[_name(str(bad_corpus.missing_src))] == "source folder does not exist"
    assert "notes.txt" not in reasons and "folder.png" not in reasons  # not image files: ignored
    assert not any(_name(p) in bad_corpus.good for p in result.quarantine["path"])

    on_disk = pd.read_csv(out / "quarantine.csv", keep_default_na=False)
    assert list(on_disk.columns) == ["path", "reason", "batch", "seen_at", "file_mtime"]
    assert len(on_disk) == len(result.quarantine) and set(on_disk["batch"]) == {"b1"}

    # packed images line up with the manifest, and the brightness is that of the packed image
    images = load_images(out)
    assert images.shape == (len(manifest), SIZE, SIZE, 3) and images.dtype == np.uint8
    assert (manifest["row"].to_numpy() == np.arange(len(manifest))).all()
    for row in manifest.itertuples():
        expected = images[row.row].max(axis=-1).mean() / 255.0
        assert row.brightness == pytest.approx(expected)
        stored, _ = read_image(out / row.stored_path, SIZE, 3)
        assert np.array_equal(stored, images[row.row]), "the packed image must be the decoded stored original"


def test_corpus_good_files_are_described_correctly(bad_corpus, tmp_path):
    out = tmp_path / "data"
    ingest(bad_corpus.sources(), out, image_size=SIZE, channels=3, split=SHARES)
    m = load_manifest(out).assign(name=lambda d: d["path"].map(_name)).set_index("name")
    images = load_images(out)

    big = m.loc["big.png"]
    assert (big.width, big.height, bool(big.resized)) == (40, 24, True)
    assert not m.drop("big.png")["resized"].any()
    assert m.loc["gray.png", "channels"] == 1 and (images[m.loc["gray.png", "row"]] == 100).all()
    g16 = images[m.loc["gray16.png", "row"]]
    assert m.loc["gray16.png", "channels"] == 1
    assert (g16[:, : SIZE // 2] == 255).all() and (g16[:, SIZE // 2 :] == 128).all()  # scaled, not clipped
    assert m.loc["rgba.png", "channels"] == 4
    red = images[m.loc["rgba.png", "row"]]
    assert abs(int(red[..., 0].mean()) - 128) <= 1 and red[..., 1:].max() == 0
    assert set(m["label"]) == {"unknown"} and set(m["source"]) == {"corpus"}
    assert (m["mask_path"] == "").all()
    assert m.loc["link_inside.png", "path"] == str(bad_corpus.src / "link_inside.png")  # followed, kept under its name
    assert m["id"].is_unique and m["id"].str.fullmatch(r"[0-9a-f]{64}").all()
    for name in ("good_rgb.png", "gray16.png"):
        digest = hashlib.sha256((bad_corpus.src / name).read_bytes()).hexdigest()
        assert m.loc[name, "id"] == digest and m.loc[name, "stored_path"] == f"store/{digest[:2]}/{digest}.png"
    pd.Timestamp(m["ingested_at"].iloc[0])  # ISO timestamp
    assert m["ingested_at"].iloc[0].endswith("+00:00")


def test_duplicates_recorded_and_stored_once(bad_corpus, tmp_path):
    out = tmp_path / "data"
    result = ingest(bad_corpus.sources(), out, image_size=SIZE, channels=3, split=SHARES)
    dups = {_name(p): _name(of) for p, of in result.duplicates[["path", "duplicate_of"]].itertuples(index=False)}
    assert dups == bad_corpus.duplicates
    digest = hashlib.sha256((bad_corpus.src / "good_rgb_copy.png").read_bytes()).hexdigest()
    assert (load_manifest(out)["id"] == digest).sum() == 1
    assert len(list((out / "store").rglob(f"{digest}*"))) == 1
    stored = sorted(p.name for p in (out / "store").rglob("*") if p.is_file())
    assert len(stored) == len(load_manifest(out)), "the store holds each distinct content exactly once"
    on_disk = pd.read_csv(out / "duplicates.csv", keep_default_na=False)
    assert list(on_disk.columns) == ["path", "id", "duplicate_of", "note", "batch", "seen_at"]
    assert on_disk["id"].tolist() == [digest]


def test_second_ingest_of_the_same_folders_adds_nothing(bad_corpus, tmp_path):
    out = tmp_path / "data"
    first = ingest(bad_corpus.sources(), out, image_size=SIZE, channels=3, split=SHARES, batch="b1")
    before = _snapshot(out)
    second = ingest(bad_corpus.sources(), out, image_size=SIZE, channels=3, split=SHARES, batch="b2")
    assert second.added.empty
    assert second.unchanged == len(bad_corpus.good)
    assert _snapshot(out) == before, "manifest, images and logs must be byte-identical after a re-ingest"
    assert set(second.quarantine["path"]) == set(first.quarantine["path"])  # still reported for this call
    assert len(second.duplicates) == len(first.duplicates)


def test_ingest_continues_after_new_images_and_logs_do_not_repeat(surfaces, tmp_path):
    a, b = surfaces
    out = tmp_path / "data"
    first = ingest([("a", a), ("nope", tmp_path / "nope")], out, SIZE, 3, SHARES, batch="b1")
    second = ingest([("a", a), ("b", b), ("nope", tmp_path / "nope")], out, SIZE, 3, SHARES, batch="b2")
    assert len(second.added) == 38 and set(second.added["batch"]) == {"b2"}
    manifest = load_manifest(out)
    assert len(manifest) == 76 and (manifest["row"].to_numpy() == np.arange(76)).all()
    assert manifest.set_index("id").loc[first.added["id"], "batch"].eq("b1").all()
    q = pd.read_csv(out / "quarantine.csv", keep_default_na=False)
    assert len(q) == 1 and q["batch"].tolist() == ["b1"]  # the same path+reason is logged once
    images = load_images(out)
    for row in second.added.itertuples():
        assert np.array_equal(images[row.row], read_image(row.path, SIZE, 3)[0])


# ----------------------------------------------------------------------------- splits
def test_split_is_stable_when_new_images_arrive(surfaces, tmp_path):
    a, b = surfaces
    out = tmp_path / "data"
    only_a = ingest([("a", a)], out, SIZE, 3, SHARES).manifest.set_index("id")
    both = ingest([("b", b), ("a", a)], out, SIZE, 3, SHARES).manifest.set_index("id")
    assert len(both) == 76
    pd.testing.assert_series_equal(both.loc[only_a.index, "split"], only_a["split"])
    assert (both.loc[only_a.index, "row"] == only_a["row"]).all()
    # the split depends on the content alone: a fresh ingest in another order agrees
    fresh = ingest([("b", b), ("a", a)], tmp_path / "fresh", SIZE, 3, SHARES).manifest.set_index("id")
    pd.testing.assert_series_equal(fresh.loc[both.index, "split"], both["split"])
    assert all(split_of(i, SHARES) == s for i, s in both["split"].items())


@pytest.mark.parametrize("shares", [SplitShares(), SplitShares(train=0.8, val=0.1, test=0.1)])
def test_split_shares_roughly_respected(shares):
    ids = [hashlib.sha256(f"image-{i}".encode()).hexdigest() for i in range(1000)]
    counts = Counter(split_of_many(ids, shares))
    assert set(counts) == {"train", "val", "test"}
    for name in ("train", "val", "test"):
        expected = 1000 * getattr(shares, name)
        assert abs(counts[name] - expected) < 4 * np.sqrt(expected), (name, counts)
    assert [split_of(i, shares) for i in ids[:50]] == list(split_of_many(ids[:50], shares))


def test_split_of_edges_and_bad_ids():
    assert split_of("0" * 64, SHARES) == "train"
    assert split_of("f" * 64, SHARES) == "test"
    assert split_of("9a" + "0" * 62, SHARES) == "val"  # 0x9a/256 = 0.60 → first value past train
    with pytest.raises(ValueError, match="hex"):
        split_of("not-a-hash-at-all-no", SHARES)


# ----------------------------------------------------------------------------- masks and labels
def test_labels_and_masks_from_a_generated_folder(surfaces, tmp_path):
    a, _ = surfaces
    out = tmp_path / "data"
    m = ingest([("syn", a)], out, SIZE, 3, SHARES).manifest
    assert Counter(m["label"]) == {"normal": 30, "anomaly": 8}
    assert not m["path"].str.contains("/masks/").any(), "masks must not be ingested as images"
    anomalies, normals = m[m["label"] == "anomaly"], m[m["label"] == "normal"]
    assert set(anomalies["defect"]) == {"scratch", "pit", "crack", "stain"} and (normals["defect"] == "").all()
    assert (normals["mask_path"] == "").all() and (anomalies["mask_path"] != "").all()
    for row in anomalies.itertuples():
        original = a / "masks" / row.defect / _name(row.path)
        assert (out / row.mask_path).read_bytes() == original.read_bytes()
    assert set(np.unique(np.asarray(Image.open(out / anomalies["mask_path"].iloc[0])))) <= {0, 255}


def test_masks_are_optional(surfaces, tmp_path):
    a, _ = surfaces
    copy = tmp_path / "nomasks"
    shutil.copytree(a, copy)
    shutil.rmtree(copy / "masks")
    m = ingest([("syn", copy)], tmp_path / "data", SIZE, 3, SHARES).manifest
    assert len(m) == 38 and (m["mask_path"] == "").all()


# ----------------------------------------------------------------------------- robustness
def test_failed_manifest_write_leaves_the_previous_manifest_intact(surfaces, tmp_path, monkeypatch):
    a, b = surfaces
    out = tmp_path / "data"
    ingest([("a", a)], out, SIZE, 3, SHARES)
    before = (out / "manifest.parquet").read_bytes()

    def disk_full(self, path, *args, **kwargs):  # writes half a file, then fails like a full disk
        Path(path).write_bytes(b"PAR1" + b"\x00" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", disk_full)
    with pytest.raises(OSError, match="No space"):
        ingest([("a", a), ("b", b)], out, SIZE, 3, SHARES)
    monkeypatch.undo()
    assert (out / "manifest.parquet").read_bytes() == before
    assert not list(out.glob(".*.tmp")), "no temp files left behind"
    assert len(load_images(out)) == 38 == len(load_manifest(out))
    again = ingest([("a", a), ("b", b)], out, SIZE, 3, SHARES)  # the next run completes the job
    assert len(again.added) == 38 and len(load_images(out)) == 76


def test_changed_image_size_repacks_from_the_store(surfaces, tmp_path):
    a, _ = surfaces
    out = tmp_path / "data"
    ingest([("a", a)], out, SIZE, 3, SHARES)
    result = ingest([("a", a)], out, 24, 1, SHARES)
    assert result.rebuilt and result.added.empty
    images = load_images(out)
    assert images.shape == (38, 24, 24, 1)
    assert load_manifest(out)["resized"].all()


def test_workers_pool_gives_the_same_result(surfaces, tmp_path, monkeypatch, caplog):
    a, b = surfaces
    monkeypatch.setattr(store_mod, "_PARALLEL_FROM", 1)
    with caplog.at_level("WARNING", logger="danvae.data.store"):
        pooled = ingest([("a", a), ("b", b)], tmp_path / "pool", SIZE, 3, SHARES, workers=2).manifest
    assert "worker pool failed" not in caplog.text, "the pool itself must have run, not the in-process fallback"
    serial = ingest([("a", a), ("b", b)], tmp_path / "serial", SIZE, 3, SHARES, workers=1).manifest
    cols = ["id", "path", "label", "defect", "split", "row", "stored_path", "mask_path", "brightness"]
    pd.testing.assert_frame_equal(pooled[cols], serial[cols])
    assert np.array_equal(load_images(tmp_path / "pool"), load_images(tmp_path / "serial"))


# ----------------------------------------------------------------------------- sources
def test_materialize_sources_generates_once(tmp_path):
    src = SyntheticSource(name="syn", n_normal=6, n_anomaly=4, size=16, seed=3)
    folder_src = FolderSource(path=str(tmp_path / "mine"))
    found = materialize_sources([src, folder_src], tmp_path / "raw")
    assert found == [("syn", tmp_path / "raw" / "syn"), ("mine", tmp_path / "mine")]
    gt = tmp_path / "raw" / "syn" / "ground_truth.csv"
    assert gt.is_file() and (tmp_path / "raw" / "syn.params.json").is_file()
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "raw" / "syn").rglob("*")}
    time.sleep(0.01)
    materialize_sources([src], tmp_path / "raw")
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "raw" / "syn").rglob("*")} == stamp, "regenerated"
    # a changed parameter regenerates, and leaves no stale files from the old set
    materialize_sources([src.model_copy(update={"n_normal": 3})], tmp_path / "raw")
    assert len(list((tmp_path / "raw" / "syn" / "normal").rglob("*.png"))) == 3
    assert not list((tmp_path / "raw").glob(".syn.tmp-*"))


def test_materialize_sources_refuses_to_overwrite_foreign_data_and_duplicate_names(tmp_path):
    from danvae.data.folders import DataError

    (tmp_path / "raw" / "syn").mkdir(parents=True)
    (tmp_path / "raw" / "syn" / "precious.png").write_bytes(b"user data")
    with pytest.raises(DataError, match="not written by the generator"):
        materialize_sources([SyntheticSource(name="syn", n_normal=2, n_anomaly=0, size=16)], tmp_path / "raw")
    assert (tmp_path / "raw" / "syn" / "precious.png").read_bytes() == b"user data"
    with pytest.raises(DataError, match="two sources"):
        materialize_sources([FolderSource(path="x/a"), FolderSource(path="y/a")], tmp_path / "raw")
    with pytest.raises(DataError, match="plain folder name"):
        materialize_sources([SyntheticSource(name="../evil")], tmp_path / "raw")


def test_a_source_holding_out_dir_does_not_reingest_the_store_or_masks(tmp_path):
    data = tmp_path / "data"
    generate_surfaces(data / "incoming", n_normal=5, n_anomaly=4, size=SIZE, seed=4)
    first = ingest([("incoming", data / "incoming")], data, SIZE, 3, SHARES)
    assert len(first.added) == 9
    again = ingest([("everything", data)], data, SIZE, 3, SHARES)  # flat walk of data/: store, masks, npy...
    assert again.added.empty and again.duplicates.empty and again.unchanged == 9


def test_logs_and_manifest_are_readable_by_the_group_not_0600(bad_corpus, tmp_path):
    out = tmp_path / "data"
    old = os.umask(0o022)
    try:
        ingest(bad_corpus.sources(), out, image_size=SIZE, channels=3, split=SHARES, batch="b1")
    finally:
        os.umask(old)
    for name in ("quarantine.csv", "duplicates.csv", "manifest.parquet"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name


def test_repack_restores_a_lost_stored_copy_from_its_source_or_refuses(surfaces, tmp_path):
    a, _ = surfaces
    out = tmp_path / "data"
    first = ingest([("a", a)], out, SIZE, 3, SHARES).manifest
    lost, damaged = (out / p for p in first["stored_path"].iloc[:2])
    lost.unlink()
    damaged.write_bytes(b"not an image any more")
    result = ingest([("a", a)], out, 24, 3, SHARES)  # a new image size re-packs from the store
    assert result.rebuilt and len(result.manifest) == len(first) == len(load_images(out))
    assert lost.is_file() and hashlib.sha256(damaged.read_bytes()).hexdigest() == first["id"].iloc[1]

    # a stored copy whose source file is gone too: the re-pack refuses and changes nothing
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    ingest([("c", copy)], tmp_path / "data2", SIZE, 3, SHARES)
    before = _snapshot(tmp_path / "data2")
    row = load_manifest(tmp_path / "data2").iloc[0]
    (tmp_path / "data2" / row["stored_path"]).unlink()
    Path(row["path"]).unlink()
    with pytest.raises(DataError, match=r"cannot re-pack at 24px .*1 stored copy is unusable.*nothing was changed"):
        ingest([("c", copy)], tmp_path / "data2", 24, 3, SHARES)
    after = _snapshot(tmp_path / "data2")
    assert after["manifest.parquet"] == before["manifest.parquet"] and after["images.npy"] == before["images.npy"]
    assert len(load_manifest(tmp_path / "data2")) == len(first)
