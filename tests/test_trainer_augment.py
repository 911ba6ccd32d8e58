"""Online augmentation: a pure, seeded transform that changes images but keeps anatomy's sides."""

import numpy as np
import pytest
import tensorflow as tf

from serving import features
from trainer import augment

SIZE = 32


def left_bright_batch(batch: int = 64, dtype: tf.DType = tf.float32) -> tf.Tensor:
    """A smooth left-to-right ramp, bright on the left (where a flip would put it on the right)."""
    ramp = np.linspace(220.0, 30.0, SIZE, dtype=np.float32)
    image = np.broadcast_to(ramp[np.newaxis, :, np.newaxis], (SIZE, SIZE, 3))
    texture = np.random.default_rng(0).normal(0.0, 5.0, (batch, SIZE, SIZE, 1)).astype(np.float32)
    return tf.cast(np.clip(image + texture, 0, 255), dtype)


@pytest.mark.parametrize("dtype", [tf.float32, tf.uint8])
def test_shape_and_dtype_are_kept(dtype):
    images = left_bright_batch(8, dtype)
    augmented = augment.augment_images(images, tf.constant([1, 2]))
    assert augmented.shape == images.shape and augmented.dtype == dtype


def test_every_image_changes_and_differently():
    images = left_bright_batch(16)
    augmented = augment.augment_images(images, tf.constant([1, 2])).numpy()
    changes = np.abs(augmented - images.numpy()).mean(axis=(1, 2, 3))
    assert (changes > 1.0).all()
    assert changes.std() > 0.1  # One transform per image, not one per batch.


def test_same_seed_same_output_new_seed_new_output():
    images = left_bright_batch(4)
    first = augment.augment_images(images, tf.constant([7, 0])).numpy()
    np.testing.assert_array_equal(first, augment.augment_images(images, tf.constant([7, 0])).numpy())
    assert np.abs(first - augment.augment_images(images, tf.constant([7, 1])).numpy()).mean() > 1.0


def test_never_flips_left_and_right():
    images = left_bright_batch(256)
    augmented = augment.augment_images(images, tf.constant([3, 4])).numpy()
    left, right = augmented[:, :, : SIZE // 2].mean(axis=(1, 2, 3)), augmented[:, :, SIZE // 2:].mean(axis=(1, 2, 3))
    assert (left > right + 50).all()


def test_no_constant_border_is_brought_in():
    """Reflection fills the corners a rotation or zoom-out uncovers: no black (or any flat) band."""
    images = left_bright_batch(64)
    augmented = augment.augment_images(images, tf.constant([5, 6])).numpy()
    corners = augmented[:, :3, :3].reshape(64, -1)
    assert corners.std(axis=1).min() > 0.5


def test_geometry_only_moves_content_by_the_drawn_transform():
    """The affine map: a 4-pixel shift right moves a bright patch 4 pixels right."""
    image = np.zeros((1, SIZE, SIZE, 1), np.float32)
    image[0, 10:15, 12:17] = 255.0
    transforms = features.affine_transforms(tf.constant([0.0]), tf.constant([1.0]), tf.constant([4.0]),
                                            tf.constant([0.0]), tf.constant(float(SIZE)), tf.constant(float(SIZE)))
    moved = features.transformed(tf.constant(image), transforms).numpy()
    rows, columns = np.nonzero(moved[0, :, :, 0] > 128)
    assert (rows.min(), rows.max(), columns.min(), columns.max()) == (10, 14, 16, 20)
