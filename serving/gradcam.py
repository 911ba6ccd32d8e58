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

from cxr_core import contract, imaging
from serving import features

KERAS_MODEL_FILE = "model.keras"
OVERLAY_OPACITY = 0.4
MIN_DISPLAY_SIZE = 512  # A 128² overlay is too small to read; it is enlarged to at least this side.


def load_model(job_dir: str) -> keras.Model:
    """The Keras model the trainer saved in `job_dir` (local or gs://)."""
    path = os.path.join(job_dir, KERAS_MODEL_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} does not exist: Grad-CAM needs the {KERAS_MODEL_FILE} "
                                "the trainer writes next to export/ in its --job_dir")
    return keras.saving.load_model(path, compile=False)


def grad_cam(model: keras.Model, pixels: np.ndarray, class_id: int | None = None) -> np.ndarray:
    """Heat map [H, W] in [0, 1] for `class_id` (default: the predicted class).

    `pixels` is the uint8 grayscale image from `imaging.preprocess_image` at the model's
    input size; it reaches the model through `features.decode_image`, as in training. A
    map of zeros means the last block holds no positive evidence for the class.
    """
    height, width = pixels.shape
    if (height, width) != tuple(model.input_shape[1:3]):
        raise ValueError(f"the model takes {model.input_shape[1]}x{model.input_shape[2]} images, got {height}x{width}")
    image = features.decode_image(imaging.encode_png(pixels), height)[tf.newaxis]
    # The class score before the softmax, as in the paper: probabilities saturate near 0 and 1,
    # where their gradients vanish and every map would be empty.
    output_layer = model.layers[-1]
    feature_model = keras.Model(model.inputs, [model.get_layer(contract.FEATURE_LAYER).output, output_layer.input])
    with tf.GradientTape() as tape:
        feature_maps, head_features = feature_model(image, training=False)
        logits = tf.matmul(tf.cast(head_features, tf.float32), output_layer.kernel) + output_layer.bias
        if class_id is None:
            class_id = int(tf.argmax(logits[0]))
        score = logits[:, class_id]
    gradients = tf.cast(tape.gradient(score, feature_maps), tf.float32)
    channel_weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(channel_weights * tf.cast(feature_maps, tf.float32), axis=-1))[0]
    cam = tf.image.resize(cam[..., tf.newaxis], (height, width), method="bilinear")[..., 0].numpy()
    peak = cam.max()
    return cam / peak if peak > 0 else np.zeros_like(cam)


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


def save_overlay(path: str, pixels: np.ndarray, heat_map: np.ndarray) -> None:
    """Writes `overlay` as a PNG (local or gs://), enlarged to at least MIN_DISPLAY_SIZE a side."""
    image = Image.fromarray(overlay(pixels, heat_map), mode="RGB")
    scale = max(1, -(-MIN_DISPLAY_SIZE // max(image.size)))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    with tf.io.gfile.GFile(path, "wb") as output:
        output.write(buffer.getvalue())
