"""Request limits of the served model, checked before any image is decoded or resized."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from danvae.serving import model_batch

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
