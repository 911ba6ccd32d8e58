"""Which layers each training stage trains, with a pretrained and with a random base.

Tests that set a stage or train get a network of their own (`fresh_network`), so no
test depends on what another one did; the shared `network` is only read.
"""

import keras
import numpy as np
import pytest

from cxr_core import contract
from serving import features
from trainer import model as model_lib

IMAGE_SIZE = 32


def build_network() -> keras.Model:
    keras.utils.set_random_seed(1)
    return model_lib.build_model(IMAGE_SIZE, weights=None)


@pytest.fixture(scope="module")
def network() -> keras.Model:
    """Shared by the tests that only read it: never set to a stage, compiled or trained."""
    return build_network()


@pytest.fixture
def fresh_network() -> keras.Model:
    """A network of the test's own, for a test that sets its stage or trains it."""
    return build_network()


def layers_of(network: keras.Model, kind: str) -> list[keras.layers.Layer]:
    """`kind`: head, batch_norm or base (every other base layer)."""
    def kind_of(layer: keras.layers.Layer) -> str:
        if isinstance(layer, keras.layers.BatchNormalization):
            return "batch_norm"
        return "head" if layer.name.startswith(model_lib.HEAD_PREFIX) else "base"
    return [layer for layer in network.layers if kind_of(layer) == kind]


def moving_means_after_one_training_step(network: keras.Model) -> list[np.ndarray]:
    # Eager: what is tested is which variables one step updates, and tracing ResNet50's
    # training step would take most of this file's time.
    network.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", run_eagerly=True)
    images = np.random.default_rng(0).uniform(-100, 100, (2, IMAGE_SIZE, IMAGE_SIZE, features.CHANNELS))
    network.train_on_batch(images.astype(np.float32), np.eye(contract.NUM_CLASSES, dtype=np.float32)[[0, 1]])
    return [layer.moving_mean.numpy() for layer in layers_of(network, "batch_norm")]


@pytest.mark.parametrize("stage, base_trains", [(1, False), (2, True)])
def test_a_pretrained_base_keeps_batch_norm_frozen_in_both_stages(fresh_network, stage, base_trains):
    model_lib.set_stage(fresh_network, stage, pretrained=True)
    assert all(layer.trainable for layer in layers_of(fresh_network, "head"))
    assert all(layer.trainable == base_trains for layer in layers_of(fresh_network, "base"))
    assert not any(layer.trainable for layer in layers_of(fresh_network, "batch_norm"))
    before = [layer.moving_mean.numpy() for layer in layers_of(fresh_network, "batch_norm")]
    for old, new in zip(before, moving_means_after_one_training_step(fresh_network)):
        np.testing.assert_array_equal(old, new)  # Inference mode: the statistics stay as loaded.


@pytest.mark.parametrize("stage, base_trains", [(1, False), (2, True)])
def test_a_random_base_trains_batch_norm_in_both_stages(fresh_network, stage, base_trains):
    model_lib.set_stage(fresh_network, stage, pretrained=False)
    assert all(layer.trainable for layer in layers_of(fresh_network, "head"))
    assert all(layer.trainable == base_trains for layer in layers_of(fresh_network, "base"))
    assert all(layer.trainable for layer in layers_of(fresh_network, "batch_norm"))
    before = [layer.moving_mean.numpy() for layer in layers_of(fresh_network, "batch_norm")]
    after = moving_means_after_one_training_step(fresh_network)
    assert all(not np.array_equal(old, new) for old, new in zip(before, after))  # Batch statistics.


def test_stage_1_trains_only_the_head_and_batch_norm_of_a_random_base(fresh_network):
    model_lib.set_stage(fresh_network, 1, pretrained=False)
    trainable = {id(weight) for weight in fresh_network.trainable_weights}
    kernels = [layer.kernel for layer in layers_of(fresh_network, "base") if hasattr(layer, "kernel")]
    assert kernels and not any(id(kernel) in trainable for kernel in kernels)
    batch_norm_weights = [weight for layer in layers_of(fresh_network, "batch_norm")
                          for weight in (layer.gamma, layer.beta)]
    assert all(id(weight) in trainable for weight in batch_norm_weights)


def test_set_stage_rejects_an_unknown_stage(fresh_network):
    with pytest.raises(ValueError, match="stage must be 1 or 2, got 3"):
        model_lib.set_stage(fresh_network, 3, pretrained=False)


def test_a_random_base_tracks_batch_statistics_fast_enough_for_short_runs(network):
    momenta = {layer.momentum for layer in layers_of(network, "batch_norm")}
    assert momenta == {model_lib.FROM_SCRATCH_BN_MOMENTUM} and model_lib.FROM_SCRATCH_BN_MOMENTUM < 0.99


def test_the_training_model_adds_an_auxiliary_classifier_that_the_served_model_lacks(network):
    training_model = model_lib.build_training_model(network)
    images = np.random.default_rng(2).uniform(-100, 100, (3, IMAGE_SIZE, IMAGE_SIZE, features.CHANNELS))

    probabilities, auxiliary = training_model(images.astype(np.float32), training=False)

    np.testing.assert_allclose(probabilities, network(images.astype(np.float32), training=False), rtol=1e-5)
    assert auxiliary.shape == (3, contract.NUM_CLASSES)
    np.testing.assert_allclose(np.sum(auxiliary, axis=1), 1.0, rtol=1e-5)
    new_layers = {layer.name for layer in training_model.layers} - {layer.name for layer in network.layers}
    assert new_layers == {model_lib.AUXILIARY_LAYER}


def test_head_variables_are_the_seed_heads_only(network):
    training_model = model_lib.build_training_model(network)
    head = {variable.path for variable in training_model.weights if model_lib.is_head_variable(variable)}

    assert head == {f"{layer.name}/{kind}" for layer in layers_of(network, "head") if layer.weights
                    for kind in ("kernel", "bias")}
    assert not any(path.startswith(model_lib.AUXILIARY_LAYER) for path in head)
