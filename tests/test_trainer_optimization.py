"""The learning rate follows the global batch (linear rule with warm-up); precision and optimizer choices."""

import keras
import numpy as np
import pytest

from trainer import optimization


def test_the_learning_rate_scales_linearly_with_the_global_batch():
    assert optimization.scaled_learning_rate(1e-3, optimization.REFERENCE_BATCH_SIZE) == pytest.approx(1e-3)
    assert optimization.scaled_learning_rate(1e-3, 8 * 32) == pytest.approx(8e-3)  # 8 GPUs × 32.
    assert optimization.scaled_learning_rate(1e-3, 16) == pytest.approx(5e-4)


def test_a_raised_rate_warms_up_linearly_from_the_reference_rate():
    schedule = optimization.learning_rate_schedule(1e-3, 256, warmup_steps=100)

    rates = [float(schedule(step)) for step in (0, 50, 100, 1000)]

    np.testing.assert_allclose(rates, [1e-3, 4.5e-3, 8e-3, 8e-3], rtol=1e-6)


@pytest.mark.parametrize("global_batch_size, expected", [(32, 1e-3), (8, 2.5e-4)])
def test_an_unchanged_or_lowered_rate_needs_no_warm_up(global_batch_size, expected):
    schedule = optimization.learning_rate_schedule(1e-3, global_batch_size, warmup_steps=100)

    assert float(schedule(0)) == pytest.approx(expected) and float(schedule(500)) == pytest.approx(expected)


@pytest.mark.parametrize("global_batch_size", [32, 256])
def test_a_cosine_stage_warms_up_from_zero_then_decays_to_zero_at_its_last_step(global_batch_size):
    peak = optimization.scaled_learning_rate(1e-3, global_batch_size)
    schedule = optimization.learning_rate_schedule(1e-3, global_batch_size, warmup_steps=100, decay="cosine",
                                                   total_steps=1100)

    rates = [float(schedule(step)) for step in (0, 50, 100, 600, 1100, 2000)]

    np.testing.assert_allclose(rates, [0.0, peak / 2, peak, peak / 2, 0.0, 0.0], rtol=1e-5, atol=1e-12)


def test_an_unknown_decay_is_refused():
    with pytest.raises(ValueError, match="decay must be one of none, cosine"):
        optimization.learning_rate_schedule(1e-3, 32, warmup_steps=0, decay="step")


def test_without_a_gpu_training_runs_in_float32():
    assert optimization.default_precision() == "none"


@pytest.mark.parametrize("precision, policy, loss_scaling", [("none", "float32", False),
                                                             ("bfloat16", "mixed_bfloat16", False),
                                                             ("float16", "mixed_float16", True)])
def test_precision_sets_the_keras_policy_and_loss_scaling(precision, policy, loss_scaling):
    try:
        optimization.set_precision(precision)
        assert keras.mixed_precision.global_policy().name == policy
        variables = [keras.Variable(np.zeros(3, np.float32))]
        optimizer = optimization.build_optimizer(optimization.learning_rate_schedule(1e-3, 32, 0), precision,
                                                 variables)
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer) == loss_scaling
        assert optimizer.built
    finally:
        optimization.set_precision("none")


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="mixed_precision must be one of none, float16, bfloat16"):
        optimization.set_precision("float8")


def test_scaled_adam_moves_each_variable_at_its_own_fraction_of_the_rate():
    full, tenth = keras.Variable(np.zeros(4, np.float32), name="base"), keras.Variable(np.zeros(4, np.float32),
                                                                                       name="head")
    optimizer = optimization.build_optimizer(optimization.learning_rate_schedule(1e-2, 32, 0), "none",
                                             [full, tenth], lambda variable: 0.1 if variable is tenth else 1.0)
    gradient = np.ones(4, np.float32)

    optimizer.apply([gradient, gradient], [full, tenth])

    # Adam's first step moves every coordinate by the rate (the gradient's sign times lr).
    np.testing.assert_allclose(full.numpy(), -1e-2, rtol=1e-3)
    np.testing.assert_allclose(tenth.numpy(), -1e-3, rtol=1e-3)
