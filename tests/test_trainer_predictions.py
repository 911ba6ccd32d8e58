"""`predictions.predict`: the model's outputs lined up with each image's label, source and patient."""

import keras
import numpy as np
import tensorflow as tf

from trainer.evaluation import predictions


def tiny_model() -> keras.Model:
    inputs = keras.Input((2, 2, 1))
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, outputs)


def test_predict_keeps_every_image_with_its_label_source_and_patient():
    rng = np.random.default_rng(0)
    images = rng.random((7, 2, 2, 1)).astype(np.float32)
    labels = np.array([0, 2, 1, 1, 0, 2, 2])
    sources = ["rsna", "covid", "rsna", "rsna", "covid", "covid", "rsna"]
    patients = [f"p{index // 2}" for index in range(7)]
    model = tiny_model()
    with_patients = tf.data.Dataset.from_tensor_slices(
        (images, tf.one_hot(labels, 3), sources, patients)).batch(3)  # The last batch holds one image.
    without_patients = tf.data.Dataset.from_tensor_slices((images, tf.one_hot(labels, 3), sources)).batch(3)

    results = predictions.predict(model, {"val": with_patients, "test": without_patients})

    assert list(results) == ["val", "test"]
    val = results["val"]
    np.testing.assert_array_equal(val.labels, labels)
    np.testing.assert_allclose(val.probabilities, model(images, training=False).numpy(), rtol=1e-6)
    assert val.probabilities.dtype == np.float32
    assert val.sources.tolist() == sources and val.patients.tolist() == patients
    assert results["test"].patients is None  # Each image then counts as its own patient.
    np.testing.assert_array_equal(results["test"].probabilities, val.probabilities)
