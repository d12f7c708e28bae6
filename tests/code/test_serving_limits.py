"""Request limits of the served model, checked before any image is decoded or resized."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from danvae.mlops.packaging import model_batch

DETECTOR = SimpleNamespace(image_size=32, channels=3)  # model_batch reads only these two


def test_within_the_limits_images_are_brought_to_the_model_size():
    out = model_batch(DETECTOR, np.zeros((4, 64, 64, 3), np.uint8), max_pixels=64 * 64, max_batch=4)
    assert out.shape == (4, 32, 32, 3) and out.dtype == np.uint8


@pytest.mark.parametrize("images, says", [
    (np.zeros((5, 8, 8, 3), np.uint8), "serve.max_batch"),
    (np.zeros((1, 65, 64, 3), np.uint8), "serve.max_pixels"),
    ([np.zeros((8, 8, 3), np.uint8), np.zeros((100, 100, 3), np.uint8)], "serve.max_pixels"),
    (np.zeros((1, 0, 64, 3), np.uint8), "nothing to score"),
])
def test_past_the_limits_a_request_is_refused_with_the_reason(images, says):
    with pytest.raises(ValueError, match=says):
        model_batch(DETECTOR, images, max_pixels=64 * 64, max_batch=4)


@pytest.mark.parametrize("images, says", [
    (np.full((1, 8, 8, 3), 0.5), "floating-point"),
    (np.full((1, 8, 8, 3), 0.5).astype(object), "floating-point"),  # JSON numbers, as the server parses them
    (np.full((1, 8, 8, 3), 256, np.int64), "0..255"),
    (np.full((1, 8, 8, 3), True), "type bool"),
])
def test_pixel_values_that_are_not_integers_0_to_255_are_refused_never_cast(images, says):
    with pytest.raises(ValueError, match=says):
        model_batch(DETECTOR, images)


def test_integer_pixels_from_json_are_taken_as_they_are():
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3))
    as_json = np.array(pixels.tolist(), dtype=object)
    np.testing.assert_array_equal(model_batch(DETECTOR, as_json), pixels.astype(np.uint8))
