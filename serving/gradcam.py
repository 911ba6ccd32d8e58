"""Grad-CAM (Selvaraju et al., 2017): where in the image the model found evidence for a class.

Each channel of the last ResNet50 block (`contract.FEATURE_LAYER`, `conv5_block3_out`) is
weighted by the mean gradient of the class score with respect to it; the positive
part of the weighted sum is scaled to [0, 1] and upsampled to the input size. That block
is the input size / 32 on a side (4×4 at 128²), so the map shows which region drove the
decision, not which pixels: a reader checks that it lies on the lungs, not on a marker,
a tube or the image border.
"""

import io
import os

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from cxr_core import contract
from serving import features

KERAS_MODEL_FILE = "model.keras"
OVERLAY_OPACITY = 0.4
MIN_DISPLAY_SIZE = 512  # A 128² overlay is too small to read; it is enlarged to at least this side.
BATCH_SIZE = 32


def load_model(job_dir: str) -> keras.Model:
    """The Keras model the trainer saved in `job_dir` (local or gs://)."""
    path = os.path.join(job_dir, KERAS_MODEL_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} does not exist: Grad-CAM needs the {KERAS_MODEL_FILE} "
                                "the trainer writes next to export/ in its --job_dir")
    return keras.saving.load_model(path, compile=False)


class GradCam:
    """A model's Grad-CAM, for one image or a batch; its sub-model and computation are built once.

    The sub-model reads the last block and the softmax layer's input; the computation runs
    in a `tf.function`, so a map costs one forward and backward pass (rebuilding the Keras
    sub-model per image cost 0.7–1.7 s an image, against 0.05 s). Images do not interact at
    inference, so the gradient of a batch's summed class scores is each image's own.
    """

    def __init__(self, model: keras.Model, batch_size: int = BATCH_SIZE):
        self._size = tuple(model.input_shape[1:3])
        self._batch_size = batch_size
        output_layer = model.layers[-1]
        feature_model = keras.Model(model.inputs, [model.get_layer(contract.FEATURE_LAYER).output,
                                                   output_layer.input])

        @tf.function(input_signature=[tf.TensorSpec([None, *self._size], tf.uint8), tf.TensorSpec([None], tf.int32)])
        def heat_maps(pixels: tf.Tensor, class_ids: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                feature_maps, head_features = feature_model(features.model_input(pixels[..., tf.newaxis]),
                                                            training=False)
                # The class score before the softmax, as in the paper: probabilities saturate near 0 and 1,
                # where their gradients vanish and every map would be empty.
                logits = tf.matmul(tf.cast(head_features, tf.float32), output_layer.kernel) + output_layer.bias
                classes = tf.where(class_ids >= 0, class_ids, tf.argmax(logits, axis=-1, output_type=tf.int32))
                score = tf.reduce_sum(tf.gather(logits, classes, axis=1, batch_dims=1))
            gradients = tf.cast(tape.gradient(score, feature_maps), tf.float32)
            channel_weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
            cams = tf.nn.relu(tf.reduce_sum(channel_weights * tf.cast(feature_maps, tf.float32), axis=-1))
            cams = tf.image.resize(cams[..., tf.newaxis], self._size, method="bilinear")[..., 0]
            peaks = tf.reduce_max(cams, axis=(1, 2), keepdims=True)
            return tf.where(peaks > 0, cams / tf.where(peaks > 0, peaks, 1.0), 0.0)

        self._heat_maps = heat_maps

    def heat_maps(self, pixels: np.ndarray, class_ids: np.ndarray | None = None) -> np.ndarray:
        """Maps float32 [N, H, W] in [0, 1]: of `class_ids[i]` (default: the predicted class) for image `pixels[i]`.

        `pixels` are uint8 grayscale images [N, H, W] from `imaging.preprocess_image` at the
        model's input size; they reach the model through `features.model_input`, as in
        training. A map of zeros means the last block holds no positive evidence for the class.

        Raises:
          ValueError: the images are not the model's input size.
        """
        pixels = np.asarray(pixels)
        if tuple(pixels.shape[1:3]) != self._size:
            raise ValueError(f"the model takes {self._size[0]}x{self._size[1]} images, "
                             f"got {pixels.shape[1]}x{pixels.shape[2]}")
        class_ids = np.full(len(pixels), -1) if class_ids is None else np.asarray(class_ids)
        maps = [self._heat_maps(tf.constant(pixels[start:start + self._batch_size], tf.uint8),
                                tf.constant(class_ids[start:start + self._batch_size], tf.int32)).numpy()
                for start in range(0, len(pixels), self._batch_size)]
        return np.concatenate(maps) if maps else np.zeros((0, *self._size), np.float32)

    def heat_map(self, pixels: np.ndarray, class_id: int | None = None) -> np.ndarray:
        """The map [H, W] of one uint8 image [H, W] (see `heat_maps`)."""
        return self.heat_maps(np.asarray(pixels)[np.newaxis], None if class_id is None else np.array([class_id]))[0]


def jet_colormap(values: np.ndarray) -> np.ndarray:
    """[H, W] values in [0, 1] → uint8 RGB [H, W, 3], blue (0) through green to red (1)."""
    scaled = 4.0 * np.clip(values, 0.0, 1.0)[..., np.newaxis]
    centres = np.array([3.0, 2.0, 1.0])  # Where red, green and blue peak on the 0–4 scale.
    return np.round(255.0 * np.clip(1.5 - np.abs(scaled - centres), 0.0, 1.0)).astype(np.uint8)


def overlay(pixels: np.ndarray, heat_map: np.ndarray, opacity: float = OVERLAY_OPACITY) -> np.ndarray:
    """The grayscale image with the coloured heat map blended over it, uint8 RGB [H, W, 3]."""
    gray = np.repeat(pixels.astype(np.float32)[..., np.newaxis], 3, axis=-1)
    blended = (1.0 - opacity) * gray + opacity * jet_colormap(heat_map).astype(np.float32)
    return np.round(blended).astype(np.uint8)


def enlarged(rgb: np.ndarray) -> np.ndarray:
    """An RGB image [H, W, 3] at the model's size, enlarged by a whole factor to at least MIN_DISPLAY_SIZE a side."""
    image = Image.fromarray(rgb, mode="RGB")
    scale = max(1, -(-MIN_DISPLAY_SIZE // max(image.size)))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.BILINEAR)
    return np.asarray(image)


def save_overlay(path: str, pixels: np.ndarray, heat_map: np.ndarray) -> None:
    """Writes `overlay` as a PNG (local or gs://), `enlarged` for reading."""
    buffer = io.BytesIO()
    Image.fromarray(enlarged(overlay(pixels, heat_map)), mode="RGB").save(buffer, format="PNG")
    with tf.io.gfile.GFile(path, "wb") as output:
        output.write(buffer.getvalue())
