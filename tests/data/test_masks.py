"""Defect masks (danvae.data.masks) through ingest: both layouts, bad masks quarantined, load_masks."""
from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from danvae.config import SplitShares
from danvae.data.folders import scan
from danvae.data.ingest import ingest
from danvae.data.manifest import load_manifest
from danvae.data.masks import MaskError, check_mask, find_masks, has_mask, load_masks

SIZE = 16  # the ingest's image size
ORIG = 32  # the images' size on disk
SHARES = SplitShares()


def _image(seed: int, size: int = ORIG) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _box(rows: slice, cols: slice, size: int = ORIG, on: int = 255) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[rows, cols] = on
    return mask


def _save(path: Path, arr: np.ndarray, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, fmt)
    return path


def _by_name(m: pd.DataFrame) -> pd.DataFrame:
    return m.assign(name=m["path"].map(os.path.basename)).set_index("name")


@pytest.fixture
def labelled(tmp_path: Path) -> Path:
    """Our layout: normal/, anomaly/<defect>/, masks/<defect>/ (one mask with another extension)."""
    src = tmp_path / "labelled"
    for i in range(2):
        _save(src / "normal" / f"n{i}.png", _image(i))
    _save(src / "anomaly" / "scratch" / "a.png", _image(10))
    _save(src / "masks" / "scratch" / "a.png", _box(slice(8, 16), slice(4, 12)))
    _save(src / "anomaly" / "scratch" / "b.jpg", _image(11))
    _save(src / "masks" / "scratch" / "b.png", _box(slice(0, 4), slice(0, 32)))  # x.jpg -> x.png
    _save(src / "anomaly" / "pit" / "c.png", _image(12))  # no mask
    _save(src / "anomaly" / "pit" / "d.png", _image(13))
    _save(src / "masks" / "pit" / "d.png", _box(slice(2, 6), slice(2, 6), on=1))  # 0/1, not 0/255
    _save(src / "anomaly" / "pit" / "e.png", _image(14))
    _save(src / "masks" / "pit" / "e.png", np.zeros((ORIG, ORIG), np.uint8))  # all zero: allowed
    return src


@pytest.fixture
def mvtec(tmp_path: Path) -> Path:
    """An MVTec AD category: train/good, test/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png."""
    src = tmp_path / "bottle"
    for i in range(3):
        _save(src / "train" / "good" / f"{i:03d}.png", _image(20 + i))
    for i in range(2):
        _save(src / "test" / "good" / f"{i:03d}.png", _image(30 + i))
    for i in range(2):
        _save(src / "test" / "crack" / f"{i:03d}.png", _image(40 + i))
        _save(src / "ground_truth" / "crack" / f"{i:03d}_mask.png", _box(slice(8, 16), slice(4 + i, 12)))
    _save(src / "test" / "hole" / "000.png", _image(50))  # mask missing: kept without one
    (src / "license.txt").write_text("CC BY-NC-SA 4.0")
    return src


# ----------------------------------------------------------------------------- layouts
def test_labelled_layout_masks_are_checked_and_stored(labelled, tmp_path):
    out = tmp_path / "data"
    result = ingest([("lab", labelled)], out, SIZE, 3, SHARES)
    assert result.quarantine.empty
    m = _by_name(load_manifest(out))
    assert sorted(m.index) == ["a.png", "b.jpg", "c.png", "d.png", "e.png", "n0.png", "n1.png"]
    assert not m["path"].str.contains("/masks/").any()
    expected = {"a.png": "scratch/a.png", "b.jpg": "scratch/b.png", "d.png": "pit/d.png", "e.png": "pit/e.png"}
    for name, rel in expected.items():
        stored = m.loc[name, "mask_path"]
        assert stored.startswith("store/") and stored.endswith(".png")
        assert (out / stored).read_bytes() == (labelled / "masks" / rel).read_bytes()
    assert (m.drop(list(expected))["mask_path"] == "").all()
    assert has_mask(m).tolist() == [n in expected for n in m.index]


def test_mvtec_tree_is_scanned_with_labels_and_defects(mvtec):
    s = scan(mvtec)
    assert s.layout == "mvtec" and not s.problems
    got = {os.path.relpath(p, mvtec): (label, defect) for p, label, defect in s.found.itertuples(index=False)}
    assert got == {
        **{f"train/good/{i:03d}.png": ("normal", "") for i in range(3)},
        **{f"test/good/{i:03d}.png": ("normal", "") for i in range(2)},
        **{f"test/crack/{i:03d}.png": ("anomaly", "crack") for i in range(2)},
        "test/hole/000.png": ("anomaly", "hole"),
    }  # ground_truth/ is never taken for images
    masks = dict(zip(s.found["path"].map(lambda p: os.path.relpath(p, mvtec)), find_masks(s)))
    assert masks["test/crack/001.png"] == str(mvtec / "ground_truth" / "crack" / "001_mask.png")
    assert masks["test/hole/000.png"] == "" and masks["train/good/000.png"] == ""


def test_mvtec_ingest_stores_masks(mvtec, tmp_path):
    out = tmp_path / "data"
    result = ingest([("bottle", mvtec)], out, SIZE, 3, SHARES)
    assert result.quarantine.empty
    m = load_manifest(out)
    assert m["label"].value_counts().to_dict() == {"normal": 5, "anomaly": 3}
    crack = m[m["defect"] == "crack"].sort_values("path")
    for row in crack.itertuples():
        original = mvtec / "ground_truth" / "crack" / f"{Path(row.path).stem}_mask.png"
        assert (out / row.mask_path).read_bytes() == original.read_bytes()
    assert (m.loc[m["defect"] != "crack", "mask_path"] == "").all()


def test_a_flat_folder_holding_an_mvtec_category_does_not_take_its_masks(mvtec):
    s = scan(mvtec.parent)  # the folder above the category: a flat walk
    assert s.layout == "flat" and len(s.found) == 8
    assert not s.found["path"].str.contains("/ground_truth/").any()


def test_the_labelled_layout_wins_over_train_and_test_folders(labelled):
    _save(labelled / "test" / "good" / "x.png", _image(60))
    s = scan(labelled)
    assert s.layout == "labelled" and not s.found["path"].str.contains("/test/").any()


def test_a_mask_symlinked_from_outside_the_source_is_not_used(labelled, tmp_path):
    outside = _save(tmp_path / "elsewhere" / "c.png", _box(slice(0, 8), slice(0, 8)))
    (labelled / "masks" / "pit" / "c.png").symlink_to(outside)
    m = _by_name(ingest([("lab", labelled)], tmp_path / "data", SIZE, 3, SHARES).manifest)
    assert m.loc["c.png", "mask_path"] == ""


# ----------------------------------------------------------------------------- bad masks
def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


_GREY = np.tile(np.arange(ORIG, dtype=np.uint8) * 8, (ORIG, 1))  # 32 grey levels
_COLOUR = np.zeros((ORIG, ORIG, 3), np.uint8)
_COLOUR[:8, :8, 0] = 255
_SPECKLE = (np.random.default_rng(0).random((ORIG, ORIG)) > 0.5).astype(np.uint8) * 255  # binary, compresses badly
BAD_MASKS = {
    "wrong size": (_png(_box(slice(0, 4), slice(0, 4), size=30)), f"mask 30×30 does not match image {ORIG}×{ORIG}"),
    "not binary": (_png(_GREY), "mask not binary: 32 grey levels"),
    "two levels, none zero": (_png(np.where(_box(slice(0, 8), slice(0, 8)) > 0, 255, 3).astype(np.uint8)),
                              "mask not binary: 2 grey levels (3 and 255, neither is 0)"),
    "coloured": (_png(_COLOUR), "mask not binary: coloured"),
    "not an image": (b"this is not a mask\n", "mask unreadable: not a recognised image format"),
    "truncated": (_png(_SPECKLE)[: len(_png(_SPECKLE)) // 2], "mask unreadable: truncated or corrupt"),
    "empty file": (b"", "mask unreadable: empty file"),
}


@pytest.mark.parametrize("layout", ["labelled", "mvtec"])
@pytest.mark.parametrize("case", list(BAD_MASKS))
def test_a_bad_mask_is_quarantined_and_its_image_kept(case, layout, labelled, mvtec, tmp_path):
    data, reason = BAD_MASKS[case]
    if layout == "labelled":
        src, image, mask = labelled, "anomaly/scratch/a.png", "masks/scratch/a.png"
    else:
        src, image, mask = mvtec, "test/crack/000.png", "ground_truth/crack/000_mask.png"
    image, mask = src / image, src / mask
    mask.write_bytes(data)
    out = tmp_path / "data"
    result = ingest([("src", src)], out, SIZE, 3, SHARES)

    assert result.quarantine["path"].tolist() == [str(mask)]
    got = result.quarantine["reason"].iloc[0]
    assert got.startswith(reason) and got.endswith("image kept without a mask") and "\n" not in got
    on_disk = pd.read_csv(out / "quarantine.csv", keep_default_na=False)
    assert on_disk[["path", "reason"]].values.tolist() == [[str(mask), got]]
    m = load_manifest(out).set_index("path")
    assert m.loc[str(image), "mask_path"] == "", "the image is kept, without the mask"
    assert len(m) == len(scan(src).found)
    assert (m.drop(str(image))["mask_path"] != "").sum() == (3 if layout == "labelled" else 1)
    again = ingest([("src", src)], out, SIZE, 3, SHARES)
    assert again.added.empty and len(pd.read_csv(out / "quarantine.csv")) == 1


def test_check_mask_accepts_every_binary_encoding():
    box = _box(slice(8, 16), slice(4, 12)) > 0
    for arr in (box.astype(np.uint8) * 255, box.astype(np.uint8), box.astype(np.uint16) * 65535,
                np.repeat((box.astype(np.uint8) * 255)[..., None], 3, axis=2)):
        assert np.array_equal(check_mask(_png(arr), ORIG, ORIG), box)
    one_bit = io.BytesIO()
    Image.fromarray(box).save(one_bit, "PNG")  # mode "1"
    assert np.array_equal(check_mask(one_bit.getvalue(), ORIG, ORIG), box)
    assert not check_mask(_png(np.zeros((4, 6), np.uint8)), 6, 4).any()
    with pytest.raises(MaskError, match=r"^mask unreadable: empty file \(0 bytes\)$"):
        check_mask(b"", 6, 4)
    assert check_mask(_png(np.full((4, 6), 7, np.uint8)), 6, 4).all()  # one value, not zero: all defect
    with pytest.raises(MaskError, match="mask 6×4 does not match image 4×6"):
        check_mask(_png(np.zeros((4, 6), np.uint8)), 4, 6)


# ----------------------------------------------------------------------------- load_masks
def test_load_masks_is_aligned_with_rows_and_resized(labelled, tmp_path):
    out = tmp_path / "data"
    ingest([("lab", labelled)], out, SIZE, 3, SHARES)
    m = _by_name(load_manifest(out))
    rows = m.loc[["n0.png", "d.png", "a.png", "c.png", "b.jpg", "e.png"]]  # any order, any subset

    masks = load_masks(out, rows, SIZE)
    assert masks.shape == (6, SIZE, SIZE) and masks.dtype == bool
    expected = np.zeros((6, SIZE, SIZE), bool)
    expected[1, 1:3, 1:3] = True  # d: rows/cols 2:6 of 32 (values 0/1), halved
    expected[2, 4:8, 2:6] = True  # a: rows 8:16, cols 4:12 of 32
    expected[4, 0:2, :] = True  # b: rows 0:4 of 32
    assert np.array_equal(masks, expected)
    assert has_mask(rows).tolist() == [False, True, True, False, True, True]

    big = load_masks(out, rows.loc[["a.png"]], 64)  # upsampled: 8×8 of 32 becomes 16×16 of 64
    assert big.shape == (1, 64, 64) and big[0, 16:32, 8:24].all() and big.sum() == 16 * 16
    assert load_masks(out, rows.iloc[:0], SIZE).shape == (0, SIZE, SIZE)


def test_load_masks_survives_a_missing_or_unreadable_stored_mask(labelled, tmp_path, caplog):
    out = tmp_path / "data"
    ingest([("lab", labelled)], out, SIZE, 3, SHARES)
    m = _by_name(load_manifest(out))
    (out / m.loc["a.png", "mask_path"]).unlink()
    (out / m.loc["b.jpg", "mask_path"]).write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="danvae.data.masks"):
        masks = load_masks(out, m.loc[["a.png", "b.jpg", "d.png"]], SIZE)
    assert not masks[0].any() and not masks[1].any() and masks[2].sum() == 4
    assert "2 stored masks missing or unreadable" in caplog.text
    assert m.loc["a.png", "mask_path"] in caplog.text and m.loc["b.jpg", "mask_path"] in caplog.text
