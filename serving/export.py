"""Exports the trained model as a SavedModel that carries its own contract.

Signatures (batch prediction, tfx-bsl RunInference and cxr-predict depend on these names):
  serving_default(examples: tf.string [None]) — serialized tf.Examples of
      `cxr_core.contract`; only `image/encoded` is read, so unlabeled records work.
  predict_png(image_png: tf.string [None]) — 8-bit grayscale PNGs as written by
      `cxr_core.imaging.encode_png` at the training image size.
  metadata() — no inputs; the `serving.model_store.ModelContract`: image size, class names
      in output order, preprocessing version, the training configuration, the decision
      rule (JSON), the temperature, the test-time zooms and the model card.
The first two return {'probabilities': float32 [N, 3], 'class_id': int64 [N]}, the class ids
indexing `contract.CLASS_NAMES`; both decode through `serving.features.decode_image`. The
model's probabilities, averaged over the image and the contract's test-time zooms
(`serving.test_time_augmentation`; none: the image alone), are first scaled by the
contract's temperature T, softmax(log p / T)
(fitted on val, `trainer.evaluation.calibration`), so that they are calibrated. With the
contract's decision rule (`cxr_core.decision_rule`, chosen on val on those scaled
probabilities), they are then prior-corrected and the class ids follow the rule, exactly as
val and test were scored; without one, they are the scaled probabilities and their argmax.
The SavedModel holds the model's weights only: no optimizer state.
"""

import keras
import numpy as np
import tensorflow as tf

from cxr_core import contract
from cxr_core.decision_rule import DecisionRule
from serving import features, model_store, test_time_augmentation


def export_saved_model(model: keras.Model, export_dir: str, model_contract: model_store.ModelContract) -> None:
    """Writes the SavedModel with the `serving_default`, `predict_png` and `metadata` signatures."""
    image_size = model_contract.image_size
    rule = model_contract.decision_rule
    temperature = model_contract.temperature
    zooms = model_contract.test_time_zooms

    def predict(images: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = test_time_augmentation.averaged_probabilities(model, images, zooms)
        if temperature != 1.0:
            probabilities = temperature_scaled(probabilities, temperature)
        if rule is None:
            return {contract.PROBABILITIES_OUTPUT: probabilities,
                    contract.CLASS_ID_OUTPUT: tf.argmax(probabilities, axis=-1, output_type=tf.int64)}
        return {contract.PROBABILITIES_OUTPUT: adjusted_probabilities(rule, probabilities),
                contract.CLASS_ID_OUTPUT: class_ids(rule, probabilities)}

    def from_examples(examples: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = tf.io.parse_example(examples, {contract.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string)})
        return predict(features.decode_images(parsed[contract.IMAGE_ENCODED], image_size))

    def from_png(image_png: tf.Tensor) -> dict[str, tf.Tensor]:
        return predict(features.decode_images(image_png, image_size))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(contract.SERVING_EXAMPLES_SIGNATURE, from_examples,
                         input_signature=[tf.TensorSpec([None], tf.string, name=contract.EXAMPLES_INPUT)])
    archive.add_endpoint(contract.SERVING_PNG_SIGNATURE, from_png,
                         input_signature=[tf.TensorSpec([None], tf.string, name=contract.PNG_INPUT)])
    archive.add_endpoint(contract.SERVING_METADATA_SIGNATURE, model_contract.as_tensors, input_signature=[])
    archive.write_out(export_dir, verbose=False)


def temperature_scaled(probabilities: tf.Tensor, temperature: float) -> tf.Tensor:
    """`trainer.evaluation.calibration.apply_temperature` in TensorFlow ops: softmax(log p / T)."""
    logits = tf.math.log(tf.maximum(tf.cast(probabilities, tf.float32), np.finfo(np.float32).tiny))
    return tf.nn.softmax(logits / temperature, axis=-1)


def adjusted_probabilities(rule: DecisionRule, probabilities: tf.Tensor) -> tf.Tensor:
    """`DecisionRule.adjusted` in TensorFlow ops, for an exported serving signature."""
    logits = tf.math.log(tf.maximum(tf.cast(probabilities, tf.float32), np.finfo(np.float32).tiny))
    return tf.nn.softmax(logits + tf.constant(rule.log_prior_ratio, tf.float32), axis=-1)


def class_ids(rule: DecisionRule, probabilities: tf.Tensor) -> tf.Tensor:
    """`DecisionRule.apply` in TensorFlow ops: int64 class ids [N] of model probabilities [N, classes]."""
    adjusted = adjusted_probabilities(rule, probabilities)
    if rule.threshold_class is None:
        return tf.argmax(adjusted, axis=-1)
    is_thresholded = tf.one_hot(rule.threshold_class, len(rule.train_prior), on_value=True, off_value=False)
    others = tf.where(is_thresholded, tf.constant(-np.inf, tf.float32), adjusted)
    return tf.where(adjusted[:, rule.threshold_class] >= rule.threshold,
                    tf.constant(rule.threshold_class, tf.int64), tf.argmax(others, axis=-1))
