"""From a record's PNG bytes to the model's input: the single implementation.

The input pipeline and both exported serving signatures call `decode_image` (or its two
halves, `decode_pixels` then `model_input`), so a served model sees exactly the tensors it
was trained on.
"""

import keras
import tensorflow as tf

from cxr_core import contract

CHANNELS = 3  # ResNet50 (and its ImageNet weights) expects RGB input.


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


def decode_images(pngs: tf.Tensor, image_size: int) -> tf.Tensor:
    """A [N] batch of PNG bytes → float32 [N, image_size, image_size, 3]."""
    return tf.map_fn(
        lambda png: decode_image(png, image_size), pngs,
        fn_output_signature=tf.TensorSpec([image_size, image_size, CHANNELS], tf.float32))


def one_hot_label(label: tf.Tensor) -> tf.Tensor:
    """Class id → the one-hot target categorical cross-entropy expects."""
    return tf.one_hot(label, contract.NUM_CLASSES, dtype=tf.float32)
