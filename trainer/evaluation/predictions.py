"""The model's predictions on the evaluation splits: the one step of evaluation that needs TensorFlow.

`trainer.evaluation.metrics` turns the predictions into figures with NumPy and
scikit-learn alone, so they are computed and tested without a model;
`trainer.evaluation.report` prints and writes them.
"""

import keras
import numpy as np
import tensorflow as tf

from trainer.evaluation.metrics import SplitPredictions


def predict(model: keras.Model, datasets: dict[str, tf.data.Dataset]) -> dict[str, SplitPredictions]:
    """{split: SplitPredictions} for batched (images, one-hot labels, sources[, patient ids]) datasets.

    Runs the model directly rather than through `model.predict`, so labels and
    predictions come from the same batches and no replica ordering has to be undone.
    """
    image_spec = next(iter(datasets.values())).element_spec[0]
    infer = tf.function(lambda images: model(images, training=False),
                        input_signature=[tf.TensorSpec(image_spec.shape, image_spec.dtype)])
    results = {}
    for split, dataset in datasets.items():
        labels, probabilities, sources, patients = [], [], [], []
        for images, one_hot_labels, batch_sources, *batch_patients in dataset:
            probabilities.append(np.asarray(infer(images), dtype=np.float32))
            labels.append(np.argmax(one_hot_labels.numpy(), axis=-1))
            sources.append(_strings(batch_sources))
            if batch_patients:
                patients.append(_strings(batch_patients[0]))
        results[split] = SplitPredictions(np.concatenate(labels), np.concatenate(probabilities),
                                          np.concatenate(sources), np.concatenate(patients) if patients else None)
    return results


def _strings(tensor: tf.Tensor) -> np.ndarray:
    return np.char.decode(tensor.numpy().astype(bytes), "utf-8")
