"""Test-time augmentation: the model's probabilities averaged over the image and fixed zooms of it.

One pass reads a film at one framing; the probabilities of a few passes at slightly other
framings (a zoom of a few percent about the centre) average out part of what a single
framing gets wrong. On val of BENCHMARKS.md's three patient keys, zooms 0.95 and 1.05 beside
the image raised pneumonia vs normal inside NIH from 0.814 / 0.840 / 0.798 to 0.837 / 0.845 /
0.819, at three times the inference (docs/trainer.md). A zoom is resampled exactly as
training's online augmentation resamples (`serving.features.transformed`), so every view is
an image the model could have been trained on.

The zooms are chosen at training time (`--test_time_zooms`) and travel in the export's
contract: the exported signatures, the temperature and decision rule fitted on val, and every
evaluation read the same averaged probabilities. The per-epoch validation that picks the best
epoch, the pooled features of the shortcut audit and Grad-CAM read the image alone.
"""

from collections.abc import Callable, Sequence

import tensorflow as tf

from serving import features

# A zoom outside this range shows the model framings training never made (its zooms are ±10%).
ZOOM_RANGE = (0.8, 1.25)


def parse_zooms(text: str) -> tuple[float, ...]:
    """'0.95,1.05' → (0.95, 1.05); '' → () (the image alone).

    Raises:
      ValueError: a value is not a number, is 1 (the image itself, always read), repeats, or
        lies outside ZOOM_RANGE.
    """
    zooms = []
    for part in (part.strip() for part in text.split(",")):
        if not part:
            continue
        try:
            zoom = float(part)
        except ValueError:
            raise ValueError(f"test-time zooms are numbers separated by commas, got {part!r}") from None
        if not ZOOM_RANGE[0] <= zoom <= ZOOM_RANGE[1]:
            raise ValueError(f"test-time zoom {zoom:g} is outside {ZOOM_RANGE[0]:g}–{ZOOM_RANGE[1]:g}")
        if zoom == 1.0 or zoom in zooms:
            raise ValueError(f"test-time zoom {zoom:g} is listed twice (the image itself, zoom 1, is always read)")
        zooms.append(zoom)
    return tuple(zooms)


def describe(zooms: Sequence[float]) -> str:
    """One phrase for reports and the model card."""
    if not zooms:
        return "probabilities of the image alone (no test-time zooms)"
    return f"probabilities averaged over the image and its zooms {', '.join(f'{zoom:g}' for zoom in zooms)}"


def zoomed(model_inputs: tf.Tensor, zoom: float) -> tf.Tensor:
    """A batch of model inputs [N, H, W, C] zoomed by `zoom` about the centre (> 1 enlarges the content)."""
    shape = tf.shape(model_inputs)
    batch = shape[0]
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    zeros = tf.zeros([batch], tf.float32)
    return features.transformed(model_inputs, features.affine_transforms(
        zeros, tf.fill([batch], tf.constant(zoom, tf.float32)), zeros, zeros, height, width))


def averaged_probabilities(model: Callable[..., tf.Tensor], model_inputs: tf.Tensor,
                           zooms: Sequence[float]) -> tf.Tensor:
    """float32 [N, classes]: the mean of the model's probabilities on the inputs and on each zoom of them."""
    total = tf.cast(model(model_inputs, training=False), tf.float32)
    for zoom in zooms:
        total += tf.cast(model(zoomed(model_inputs, zoom), training=False), tf.float32)
    return total / float(len(zooms) + 1)
