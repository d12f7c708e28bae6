"""Data contract of the embedded synthetic surface generator (danvae.data.synthetic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation
from sklearn.metrics import roc_auc_score

from danvae.data.synthetic import (
    DEFECTS,
    DIFFICULTIES,
    MATERIALS,
    Difficulty,
    Surface,
    generate_surfaces,
    render_surface,
    sample_lighting,
)

COLUMNS = ["file", "label", "defect", "material", "lighting", "brightness"]


def _png_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def _pair(seed: int, size: int, material: str, defect: str, difficulty: str = "default", lighting: float = 0.9):
    """The same surface rendered with and without the defect (same rng state)."""
    d = DIFFICULTIES[difficulty]
    with_defect = render_surface(np.random.default_rng(seed), size, material, defect, lighting, d)
    without = render_surface(np.random.default_rng(seed), size, material, None, lighting, d)
    return with_defect, without


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("synthetic")
    table = generate_surfaces(root, n_normal=24, n_anomaly=16, size=24, dark_share=0.25, seed=7)
    return root, table


# ----------------------------------------------------------------------------- determinism
def test_same_seed_gives_byte_identical_pngs_and_other_seed_differs(tmp_path):
    kwargs = dict(n_normal=6, n_anomaly=4, size=20)
    generate_surfaces(tmp_path / "a", seed=3, **kwargs)
    generate_surfaces(tmp_path / "b", seed=3, **kwargs)
    generate_surfaces(tmp_path / "c", seed=4, **kwargs)
    a, b, c = (_png_bytes(tmp_path / k) for k in "abc")
    assert a == b
    csv = "ground_truth.csv"
    assert (tmp_path / "a" / csv).read_bytes() == (tmp_path / "b" / csv).read_bytes()
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if not k.startswith("masks/")), "a different seed must change every image"


def test_an_image_does_not_depend_on_how_many_images_of_the_other_kind_were_made(tmp_path):
    generate_surfaces(tmp_path / "few", n_normal=2, n_anomaly=4, size=20, seed=1)
    generate_surfaces(tmp_path / "many", n_normal=9, n_anomaly=6, size=20, seed=1)
    few, many = _png_bytes(tmp_path / "few"), _png_bytes(tmp_path / "many")
    assert few.items() <= many.items()


def test_no_two_images_are_identical(small_set):
    root, table = small_set
    digests = {(root / f).read_bytes() for f in table.file}
    assert len(digests) == len(table)


# ----------------------------------------------------------------------------- layout
def test_folder_layout_and_ground_truth_table(small_set):
    root, table = small_set
    assert list(table.columns) == COLUMNS
    on_disk = pd.read_csv(root / "ground_truth.csv", keep_default_na=False)
    assert list(on_disk.columns) == COLUMNS
    pd.testing.assert_frame_equal(on_disk, table, check_dtype=False)

    assert (table.label == "normal").sum() == 24 and (table.label == "anomaly").sum() == 16
    normals, anomalies = table[table.label == "normal"], table[table.label == "anomaly"]
    assert (normals.defect == "").all()
    assert normals.material.value_counts().to_dict() == {m: 6 for m in MATERIALS}
    assert anomalies.defect.value_counts().to_dict() == {d: 4 for d in DEFECTS}
    assert set(anomalies.material) == set(MATERIALS)

    for row in table.itertuples():
        path = root / row.file
        assert path.is_file()
        parts = Path(row.file).parts
        if row.label == "normal":
            assert parts[:2] == ("normal", row.material)
        else:
            assert parts[:2] == ("anomaly", row.defect)
            mask_path = root / "masks" / row.defect / path.name
            with Image.open(mask_path) as img:
                assert img.mode == "L"
                mask = np.asarray(img)
            assert set(np.unique(mask)) <= {0, 255} and mask.any()
            assert mask.shape == (24, 24)
        with Image.open(path) as img:
            assert img.mode == "RGB" and img.size == (24, 24)
    n_masks = len(list((root / "masks").rglob("*.png")))
    assert n_masks == 16


def test_ground_truth_brightness_is_recomputable_from_the_png(small_set):
    root, table = small_set
    for row in table.itertuples():
        with Image.open(root / row.file) as img:
            rgb = np.asarray(img.convert("RGB"), dtype=np.float64)
        assert row.brightness == pytest.approx(rgb.max(axis=2).mean() / 255.0, abs=1e-9)


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.int64)


def _mask(root: Path, file: str) -> np.ndarray:
    path = root / "masks" / Path(file).parent.name / Path(file).name
    with Image.open(path) as img:
        return np.asarray(img) > 0


def test_materials_subset_and_custom_difficulty_are_honoured(tmp_path):
    """Only the asked materials are drawn; a custom Difficulty's contrast sets how strongly a defect
    changes its pixels (about twice as much at twice the contrast) and its scale
    sets the defect's size (same seed, so the same surfaces and defect shapes otherwise)."""

    def make(name: str, contrast: float, scale: float) -> tuple[Path, pd.DataFrame]:
        root = tmp_path / name
        table = generate_surfaces(root, n_normal=4, n_anomaly=8, size=32, seed=5, materials=["wood"],
                                  difficulty=Difficulty(name, contrast=contrast, scale=scale))
        return root, table

    (flat, table), (low, _), (high, _), (big, _) = (make("flat", 0.0, 0.1), make("low", 0.3, 0.1),
                                                    make("high", 0.6, 0.1), make("big", 0.3, 0.2))
    assert set(table.material) == {"wood"}
    assert [p.name for p in (flat / "normal").iterdir()] == ["wood"]
    files = table.file[table.label == "anomaly"].tolist()
    change_low = change_high = 0
    for f in files:
        base = _rgb(flat / f)
        change_low += int(np.abs(_rgb(low / f) - base).sum())
        change_high += int(np.abs(_rgb(high / f) - base).sum())
        assert (_mask(low, f) == _mask(high, f)).all()
    assert change_low > 0, "a defect at contrast 0.3 must differ from the same defect at contrast 0"
    assert 1.6 < change_high / change_low < 2.4
    area = {root.name: np.mean([_mask(root, f).sum() for f in files]) for root in (low, big)}
    assert area["big"] > 2 * area["low"]


def test_zero_images_give_an_empty_table_with_the_columns(tmp_path):
    table = generate_surfaces(tmp_path, n_normal=0, n_anomaly=0, size=16)
    assert table.empty and list(table.columns) == COLUMNS
    assert (tmp_path / "ground_truth.csv").is_file()


# ----------------------------------------------------------------------------- defects
@pytest.mark.parametrize("defect", DEFECTS)
@pytest.mark.parametrize("material", MATERIALS)
def test_defect_mask_marks_pixels_that_changed_and_nothing_far_away_changed(defect, material):
    for seed in range(3):
        bad, good = _pair(seed, 48, material, defect)
        assert isinstance(bad, Surface) and bad.image.dtype == np.uint8 and bad.image.shape == (48, 48, 3)
        assert bad.mask.dtype == bool and bad.mask.shape == (48, 48) and bad.mask.any()
        assert not good.mask.any() and good.defect is None and bad.defect == defect
        change = np.abs(bad.image.astype(int) - good.image.astype(int)).max(axis=2)
        assert (change[bad.mask] >= 2).mean() > 0.8, "pixels under the mask must visibly differ"
        far = ~binary_dilation(bad.mask, iterations=5)
        assert change[far].max() <= 1, "the defect must not change pixels far from its mask"


@pytest.mark.parametrize("defect", DEFECTS)
def test_defects_lie_fully_inside_the_image(defect):
    for seed in range(40):
        bad, _ = _pair(seed, 32, MATERIALS[seed % 4], defect, difficulty="easy")
        m = bad.mask
        assert not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())


@pytest.mark.parametrize(("difficulty", "size", "min_pixels"), [("easy", 32, 14), ("default", 64, 10)])
@pytest.mark.parametrize("defect", DEFECTS)
def test_defects_change_a_visible_number_of_pixels(defect, difficulty, size, min_pixels):
    d = DIFFICULTIES[difficulty]
    for seed in range(30):
        s = render_surface(np.random.default_rng(seed), size, MATERIALS[seed % 4], defect, 1.0, d)
        assert s.mask.sum() >= min_pixels


def test_difficulties_are_ordered_by_size_and_contrast():
    easy, default, hard = (DIFFICULTIES[k] for k in ("easy", "default", "hard"))
    assert easy.contrast > default.contrast > hard.contrast
    assert easy.scale > default.scale > hard.scale
    strength = {}
    for name in DIFFICULTIES:
        changes = []
        for seed in range(24):
            bad, good = _pair(seed, 48, MATERIALS[seed % 4], DEFECTS[seed % 4], difficulty=name)
            changes.append(np.abs(bad.image.astype(int) - good.image.astype(int)).sum())
        strength[name] = np.mean(changes)
    assert strength["easy"] > strength["default"] > strength["hard"]


def test_default_defects_do_not_shift_the_image_mean():
    """Defects are small and faint: a threshold on the image mean cannot find them."""
    labels, means = [], []
    for i in range(320):
        defect = None if i % 2 == 0 else DEFECTS[(i // 2) % 4]
        rng = np.random.default_rng(1000 + i)
        lighting = sample_lighting(rng, 0.15)
        s = render_surface(rng, 48, MATERIALS[(i // 8) % 4], defect, lighting, DIFFICULTIES["default"])
        labels.append(defect is not None)
        means.append(s.image.mean())
    assert 0.3 < roc_auc_score(labels, means) < 0.7


# ----------------------------------------------------------------------------- lighting
def test_sample_lighting_ranges():
    rng = np.random.default_rng(0)
    lit = [sample_lighting(rng, 0.0) for _ in range(200)]
    dark = [sample_lighting(rng, 1.0) for _ in range(200)]
    assert min(lit) >= 0.7 and max(lit) <= 1.0
    assert min(dark) >= 0.2 and max(dark) <= 0.4


def test_dark_images_are_darker_and_as_frequent_as_asked(tmp_path):
    table = generate_surfaces(tmp_path, n_normal=240, n_anomaly=0, size=16, dark_share=0.3, seed=2)
    dark = table.lighting < 0.5
    assert 0.2 < dark.mean() < 0.4
    assert roc_auc_score(~dark, table.brightness) > 0.98
    for _, group in table.groupby("material"):
        d = group.lighting < 0.5
        assert group.brightness[d].mean() < 0.6 * group.brightness[~d].mean()


def test_anomaly_dark_share_is_separate_from_normal_dark_share(tmp_path):
    table = generate_surfaces(
        tmp_path, n_normal=40, n_anomaly=40, size=16, dark_share=0.5, anomaly_dark_share=0.0
    )
    normals, anomalies = table[table.label == "normal"], table[table.label == "anomaly"]
    assert (anomalies.lighting >= 0.7).all()
    assert (normals.lighting < 0.5).any()


def test_lighting_is_reported_and_scales_the_image():
    d = DIFFICULTIES["default"]
    bright = render_surface(np.random.default_rng(5), 32, "concrete", None, 1.0, d)
    dim = render_surface(np.random.default_rng(5), 32, "concrete", None, 0.3, d)
    assert bright.lighting == 1.0 and dim.lighting == 0.3
    assert dim.image.mean() < 0.4 * bright.image.mean()


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(size=8), "at least 16"),
        (dict(n_normal=-1), "n_normal must be an integer >= 0"),
        (dict(n_anomaly=-3), "n_anomaly must be an integer >= 0"),
        (dict(dark_share=1.5), "between 0 and 1"),
        (dict(anomaly_dark_share=-0.1), "between 0 and 1"),
        (dict(difficulty="medium"), "easy, default, hard"),
        (dict(materials=["marble"]), "brushed_metal, concrete, woven_fabric, wood"),
        (dict(materials=[]), "use some of"),
    ],
)
def test_invalid_generate_arguments_raise_a_one_line_value_error(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        generate_surfaces(tmp_path, **{"n_normal": 1, "n_anomaly": 1, "size": 16, **kwargs})
    assert "\n" not in str(info.value)
    assert not list(tmp_path.rglob("*.png")), "nothing is written when the arguments are invalid"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((16, "marble", None, 1.0), "unknown material"),
        ((16, "wood", "dent", 1.0), "scratch, pit, crack, stain"),
        ((16, "wood", None, 0.0), r"\(0, 1\]"),
        ((12, "wood", None, 1.0), "at least 16"),
    ],
)
def test_invalid_render_arguments_raise_value_error(args, message):
    with pytest.raises(ValueError, match=message):
        render_surface(np.random.default_rng(0), *args, DIFFICULTIES["default"])


def test_invalid_dark_share_for_sample_lighting():
    with pytest.raises(ValueError, match="between 0 and 1"):
        sample_lighting(np.random.default_rng(0), 2.0)
