"""Grad-CAM for many images at once, and how much of each map lies on the chest rather than the border.

`grad_cams` is `serving.gradcam.grad_cam` computed for a batch: the same layer, the same
pre-softmax class score, the same channel weights, ReLU, bilinear upsampling and scaling to
the map's peak (the tests check it map for map). Evaluation needs a map per test image, and
one model call per batch instead of per image is what makes that affordable.

`central_share` is the share of a map's mass inside the central region: the image minus a
band of `BORDER_FRACTION` of the side along each edge, where the preprocessing leaves what
is not the lungs (burnt-in text, side markers, the edge of the detector or of a journal
figure). A map spread evenly would put `UNIFORM_CENTRAL_SHARE` there; a model that reads
the source from the border puts less (DeGrave, Janizek and Lee, Nature Machine
Intelligence, 2021, found such models' saliency outside the lungs).
"""

import keras
import numpy as np
import tensorflow as tf

from cxr_core import contract
from serving import features

BORDER_FRACTION = 0.125
UNIFORM_CENTRAL_SHARE = (1 - 2 * BORDER_FRACTION) ** 2
BATCH_SIZE = 32


def grad_cams(model: keras.Model, pixels: np.ndarray, class_ids: np.ndarray, batch_size: int = BATCH_SIZE
              ) -> np.ndarray:
    """Heat maps float32 [N, H, W] in [0, 1], of class `class_ids[i]` for uint8 gray image `pixels[i]` [N, H, W].

    A map of zeros means the last block holds no positive evidence for the class.
    """
    pixels = np.asarray(pixels)
    height, width = pixels.shape[1:3]
    output_layer = model.layers[-1]
    feature_model = keras.Model(model.inputs, [model.get_layer(contract.FEATURE_LAYER).output, output_layer.input])

    @tf.function(reduce_retracing=True)
    def batch_maps(images: tf.Tensor, classes: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            feature_maps, head_features = feature_model(images, training=False)
            logits = tf.matmul(tf.cast(head_features, tf.float32), output_layer.kernel) + output_layer.bias
            # Images do not interact at inference, so the gradient of the summed scores is each image's own.
            score = tf.reduce_sum(tf.gather(logits, classes, axis=1, batch_dims=1))
        gradients = tf.cast(tape.gradient(score, feature_maps), tf.float32)
        channel_weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        cams = tf.nn.relu(tf.reduce_sum(channel_weights * tf.cast(feature_maps, tf.float32), axis=-1))
        cams = tf.image.resize(cams[..., tf.newaxis], (height, width), method="bilinear")[..., 0]
        peaks = tf.reduce_max(cams, axis=(1, 2), keepdims=True)
        return tf.where(peaks > 0, cams / tf.where(peaks > 0, peaks, 1.0), 0.0)

    maps = [batch_maps(features.model_input(tf.constant(pixels[start:start + batch_size, ..., np.newaxis])),
                       tf.constant(np.asarray(class_ids[start:start + batch_size]), tf.int32)).numpy()
            for start in range(0, len(pixels), batch_size)]
    return np.concatenate(maps) if maps else np.zeros((0, height, width), np.float32)


def central_share(heat_maps: np.ndarray, border_fraction: float = BORDER_FRACTION) -> np.ndarray:
    """[N] share of each map's mass inside the central region; NaN for an empty map."""
    heat_maps = np.asarray(heat_maps, dtype=np.float64)
    height, width = heat_maps.shape[1:3]
    rows, columns = round(height * border_fraction), round(width * border_fraction)
    total = heat_maps.sum(axis=(1, 2))
    inside = heat_maps[:, rows:height - rows, columns:width - columns].sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)
