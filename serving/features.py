"""From a record's PNG bytes to the model's input: the single implementation.

The input pipeline and both exported serving signatures call `decode_image` (or its two
halves, `decode_pixels` then `model_input`), so a served model sees exactly the tensors it
was trained on.
"""

import keras
import tensorflow as tf

from cxr_core import contract

CHANNELS = 3  # ResNet50 (and its ImageNet weights) expects RGB input.
# Pixels a geometric transform brings in from outside the image are reflected from inside it, so no
# border (black corners, a constant band) appears that could mark a transformed image.
FILL_MODE = "REFLECT"


def parse_spec() -> dict[str, tf.io.FixedLenFeature]:
    """Every schema key, without defaults: a record that lacks one fails to parse."""
    spec = {key: tf.io.FixedLenFeature([], tf.string) for key in contract.BYTES_FEATURES}
    spec.update({key: tf.io.FixedLenFeature([], tf.int64) for key in contract.INT64_FEATURES})
    return spec


def decode_image(png: tf.Tensor, image_size: int) -> tf.Tensor:
    """One encoded 8-bit grayscale PNG → float32 [image_size, image_size, 3]: `model_input(decode_pixels(...))`."""
    return model_input(decode_pixels(png, image_size))


def decode_pixels(png: tf.Tensor, image_size: int) -> tf.Tensor:
    """One encoded 8-bit grayscale PNG → its uint8 pixels [image_size, image_size, 1].

    The input pipeline caches this compact form (a quarter of the float32 RGB bytes of
    `model_input`), so an epoch served from memory skips PNG decoding only.
    """
    image = tf.io.decode_png(png, channels=1, dtype=tf.uint8)
    tf.debugging.assert_equal(
        tf.shape(image)[:2], tf.constant([image_size, image_size]),
        message=(f"the model takes {image_size}x{image_size} PNGs, as written by "
                 f"cxr_core.imaging.preprocess_image(..., image_size={image_size})"))
    return tf.ensure_shape(image, [image_size, image_size, 1])


def model_input(pixels: tf.Tensor) -> tf.Tensor:
    """uint8 gray pixels [..., H, W, 1] → float32 [..., H, W, 3].

    The gray channel is repeated three times and ResNet50's own preprocessing is
    applied (BGR mean subtraction), which is what ImageNet weights were trained on.
    """
    image = tf.image.grayscale_to_rgb(pixels)
    return keras.applications.resnet50.preprocess_input(tf.cast(image, tf.float32))


def transformed(images: tf.Tensor, transforms: tf.Tensor) -> tf.Tensor:
    """Images [N, H, W, C] (float) resampled once, bilinearly, through `affine_transforms` maps [N, 8]."""
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode=FILL_MODE)


def affine_transforms(angles: tf.Tensor, zooms: tf.Tensor, shift_x: tf.Tensor, shift_y: tf.Tensor,
                      height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """[batch, 8] output-to-input maps of `ImageProjectiveTransformV3`: rotate and zoom about the centre, shift.

    An output pixel (x, y) samples the input at centre + R(angle)·((x, y) − centre) / zoom − shift,
    so the content turns by `angle`, grows by `zoom` and moves by `shift`.
    """
    cos, sin = tf.cos(angles) / zooms, tf.sin(angles) / zooms
    centre_x, centre_y = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    zeros = tf.zeros_like(angles)
    return tf.stack([
        cos, -sin, centre_x - cos * centre_x + sin * centre_y - shift_x,
        sin, cos, centre_y - sin * centre_x - cos * centre_y - shift_y,
        zeros, zeros,
    ], axis=1)


def decode_images(pngs: tf.Tensor, image_size: int) -> tf.Tensor:
    """A [N] batch of PNG bytes → float32 [N, image_size, image_size, 3]."""
    return tf.map_fn(
        lambda png: decode_image(png, image_size), pngs,
        fn_output_signature=tf.TensorSpec([image_size, image_size, CHANNELS], tf.float32))


def one_hot_label(label: tf.Tensor) -> tf.Tensor:
    """Class id → the one-hot target categorical cross-entropy expects."""
    return tf.one_hot(label, contract.NUM_CLASSES, dtype=tf.float32)
