"""Batched Grad-CAM equals serving's one-image Grad-CAM, and the central share of hand-built maps."""

import keras
import numpy as np
import pytest

from serving import gradcam
from synthetic import records
from trainer import model as model_lib
from trainer import saliency

IMAGE_SIZE = 64  # The last block is 2×2 here, so maps are not constant (tests/test_serving.py).


@pytest.fixture(scope="module")
def untrained_model() -> keras.Model:
    keras.utils.set_random_seed(5)
    return model_lib.build_model(IMAGE_SIZE, weights=None)


def test_batched_grad_cam_equals_serving_grad_cam_image_by_image(untrained_model):
    pixels = np.stack([records.render_pixels(label, IMAGE_SIZE, seed)
                       for seed, label in enumerate(("normal", "pneumonia", "covid19", "normal", "covid19"))])
    class_ids = np.array([0, 1, 2, 2, 1])
    maps = saliency.grad_cams(untrained_model, pixels, class_ids, batch_size=2)
    assert maps.shape == (5, IMAGE_SIZE, IMAGE_SIZE)
    for image, class_id, heat_map in zip(pixels, class_ids, maps):
        np.testing.assert_allclose(heat_map, gradcam.grad_cam(untrained_model, image, int(class_id)), atol=1e-4)
    assert any(heat_map.max() == pytest.approx(1.0) and heat_map.min() < 1.0 for heat_map in maps)


def test_central_share_of_hand_built_maps():
    size = 64
    band = round(size * saliency.BORDER_FRACTION)  # 8 pixels along each edge
    border_only = np.zeros((size, size))
    border_only[:band, :] = 1.0
    centre_only = np.zeros((size, size))
    centre_only[band:-band, band:-band] = 0.5
    half_and_half = np.zeros((size, size))
    half_and_half[:band, :band] = 1.0  # 64 pixels in the top left corner ...
    half_and_half[30:32, 24:56] = 1.0  # ... and 64 in the middle.
    shares = saliency.central_share(np.stack([border_only, centre_only, np.ones((size, size)), half_and_half,
                                              np.zeros((size, size))]))
    np.testing.assert_allclose(shares[:4], [0.0, 1.0, saliency.UNIFORM_CENTRAL_SHARE, 0.5])
    assert saliency.UNIFORM_CENTRAL_SHARE == pytest.approx(48 * 48 / 64 ** 2)
    assert np.isnan(shares[4])
