"""Online augmentation of training batches: a new random transform at every step.

The preprocess job's offline copies are fixed: each one is the same image in every
epoch. On top of them, every training batch gets, per image, a random rotation, zoom,
shift, brightness shift and contrast factor, within the ranges of
`cxr_core.augmentation.PARAMETERS`, which sets the offline copies' ranges too. No
horizontal flips: they move the heart to the right, an anatomy the
model should not be taught. Pixels the transform brings in from outside the image
are reflected from inside it (`serving.features.transformed`, which test-time zooms
use too), so no border (black corners, a constant band) appears that could mark
augmented images.

Rotation, zoom and shift are one affine map, resampled once
(`ImageProjectiveTransformV3`, bilinear), rather than three Keras layers resampling
three times. Every draw is a stateless random op seeded by the caller, so
`augment_images` is a pure function: the same images and seed give the same output
on any machine, inside tf.data on CPU or eagerly.

The trainer applies it to the model's input (the gray level repeated in three
channels, minus ResNet50's per-channel means). Every step is affine in the gray
level and contrast is taken around each channel's own mean, so this equals
augmenting the gray image first, except that values are not clipped to 0–255 there;
uint8 input is clipped and rounded.
"""

import math

import tensorflow as tf

from cxr_core.augmentation import PARAMETERS
from serving import features

PIXEL_RANGE = 255.0


def augment_images(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """A random transform of each image in a [batch, height, width, channels] batch.

    Args:
      images: uint8 or float pixels in 8-bit units (any constant offset per channel).
      seed: shape [2] integer seed of the stateless random ops; a new seed per batch
        gives new transforms.

    Returns:
      The transformed batch, same shape and dtype.
    """
    images = tf.convert_to_tensor(images)
    pixels = tf.cast(images, tf.float32)
    shape = tf.shape(pixels)
    batch = shape[0]
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    angle_seed, zoom_seed, shift_seed, brightness_seed, contrast_seed = tf.unstack(
        tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=5))
    max_angle = math.radians(PARAMETERS.max_rotation_degrees)
    angles = tf.random.stateless_uniform([batch], angle_seed, -max_angle, max_angle)
    zooms = tf.random.stateless_uniform([batch], zoom_seed, *PARAMETERS.zoom_range)
    max_shift = PARAMETERS.online_max_shift_fraction
    shifts = tf.random.stateless_uniform([batch, 2], shift_seed, -max_shift, max_shift)
    pixels = features.transformed(pixels, features.affine_transforms(
        angles, zooms, shifts[:, 0] * width, shifts[:, 1] * height, height, width))

    max_delta = PARAMETERS.online_max_brightness_delta
    brightness = tf.random.stateless_uniform([batch, 1, 1, 1], brightness_seed, -max_delta, max_delta) * PIXEL_RANGE
    contrast = tf.random.stateless_uniform([batch, 1, 1, 1], contrast_seed, *PARAMETERS.online_contrast_range)
    mean = tf.reduce_mean(pixels, axis=[1, 2], keepdims=True)
    pixels = (pixels - mean) * contrast + mean + brightness
    if images.dtype == tf.uint8:
        return tf.cast(tf.clip_by_value(tf.round(pixels), 0.0, PIXEL_RANGE), tf.uint8)
    return tf.cast(pixels, images.dtype)
