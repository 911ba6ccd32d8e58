"""serving.test_time_augmentation: the zooms, their parsing and the averaged probabilities."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from serving import test_time_augmentation

SIZE = 64


def centred_square(side: int) -> np.ndarray:
    """[1, SIZE, SIZE, 1] float32: a bright square of `side` pixels in the middle of a dark image."""
    image = np.zeros((1, SIZE, SIZE, 1), np.float32)
    start = (SIZE - side) // 2
    image[0, start:start + side, start:start + side] = 255.0
    return image


def bright_side(image: np.ndarray) -> int:
    """The side of the bright square, measured along the middle row."""
    return int((image[0, SIZE // 2, :, 0] > 128).sum())


@pytest.mark.parametrize("zoom, side", [(1.25, 40), (0.8, 26), (1.0, 32)])
def test_a_zoom_scales_the_content_about_the_centre(zoom, side):
    zoomed = test_time_augmentation.zoomed(tf.constant(centred_square(32)), zoom).numpy()

    assert bright_side(zoomed) == side
    rows, columns = np.nonzero(zoomed[0, :, :, 0] > 128)
    assert abs(rows.mean() - (SIZE - 1) / 2) < 0.6 and abs(columns.mean() - (SIZE - 1) / 2) < 0.6


def test_a_zoom_out_fills_the_border_by_reflection_not_a_flat_band():
    image = np.tile(np.linspace(0, 255, SIZE, dtype=np.float32)[None, :, None], (SIZE, 1, 1))[None]

    zoomed = test_time_augmentation.zoomed(tf.constant(image), 0.8).numpy()

    assert zoomed[0, :, :3].std() > 1.0 and zoomed[0, :, -3:].std() > 1.0


def test_the_probabilities_are_the_mean_over_the_image_and_each_zoom():
    inputs = keras.Input((SIZE, SIZE, 1))
    # The bright area's share moves the classes: a zoom changes what the model says.
    weights = keras.initializers.Constant([[-0.02, 0.0, 0.02]])
    head = keras.layers.Dense(3, activation="softmax", kernel_initializer=weights)
    model = keras.Model(inputs, head(keras.layers.GlobalAveragePooling2D()(inputs)))
    images = tf.constant(np.concatenate([centred_square(side) for side in (8, 24, 40)]))

    alone = test_time_augmentation.averaged_probabilities(model, images, ())
    averaged = test_time_augmentation.averaged_probabilities(model, images, (0.9, 1.2))

    np.testing.assert_allclose(alone, model(images), rtol=1e-6)
    by_hand = (model(images) + model(test_time_augmentation.zoomed(images, 0.9))
               + model(test_time_augmentation.zoomed(images, 1.2))) / 3
    np.testing.assert_allclose(averaged, by_hand, rtol=1e-6)
    assert np.abs(averaged.numpy() - alone.numpy()).max() > 1e-3
    np.testing.assert_allclose(averaged.numpy().sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("text, zooms", [("", ()), ("0.95,1.05", (0.95, 1.05)), (" 1.1 , 0.9 ,", (1.1, 0.9))])
def test_zooms_are_read_from_a_comma_separated_list(text, zooms):
    assert test_time_augmentation.parse_zooms(text) == zooms


@pytest.mark.parametrize("text, message", [
    ("0.95;1.05", "numbers separated by commas"),
    ("2", "outside 0.8–1.25"),
    ("0.5", "outside 0.8–1.25"),
    ("1", "always read"),
    ("0.9,0.9", "listed twice"),
])
def test_unusable_zooms_are_refused_with_the_reason(text, message):
    with pytest.raises(ValueError, match=message):
        test_time_augmentation.parse_zooms(text)


def test_the_description_names_the_zooms():
    assert test_time_augmentation.describe(()) == "probabilities of the image alone (no test-time zooms)"
    assert test_time_augmentation.describe((0.95, 1.05)) == (
        "probabilities averaged over the image and its zooms 0.95, 1.05")
