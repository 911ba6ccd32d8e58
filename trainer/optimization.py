"""Numeric precision, the learning rate as a function of the global batch, and the optimizer.

Learning rate: the linear scaling rule of Goyal et al. (2017, "Accurate, Large Minibatch
SGD"). The flags give the rate for a global batch of `REFERENCE_BATCH_SIZE` (32, one
replica at the default batch size); a global batch of B trains at rate × B / 32, so
renting more GPUs does not change the model a user gets more than the batch size itself
does. When that raises the rate, each stage starts at the reference rate and ramps
linearly to the scaled one over its first `warmup_steps` steps; when it lowers the rate
(a global batch under 32), no warm-up is needed.

With `decay="cosine"` each stage instead warms up from 0 to its scaled rate over `warmup_steps`
and then follows a half cosine down to 0 at its last step (Loshchilov & Hutter 2017, with
Goyal's warm-up; Keras' `CosineDecay`). On small, noisy sets the constant rate leaves the
weights wandering between good and bad epochs; the decay ends on a plateau (docs/trainer.md).

Some variables can learn at a fixed fraction of that rate (`ScaledAdam`): a randomly
initialised ResNet50 trains its seed head at a tenth of the base's rate (see
`trainer.model`).
"""

from collections.abc import Callable

import keras
import tensorflow as tf

REFERENCE_BATCH_SIZE = 32
DECAYS = ("none", "cosine")
PRECISIONS = ("none", "float16", "bfloat16")
_KERAS_POLICIES = {"none": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}
# NVIDIA Ampere (compute capability 8.0: A100, L4) and later run bfloat16 at float16 speed,
# and bfloat16 keeps float32's exponent range, so it needs no loss scaling.
BFLOAT16_COMPUTE_CAPABILITY = (8, 0)


def default_precision() -> str:
    """`bfloat16` on Ampere or newer GPUs, `float16` on older ones, `none` without a GPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "none"
    capabilities = [tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
                    for gpu in gpus]
    return "bfloat16" if min(capabilities) >= BFLOAT16_COMPUTE_CAPABILITY else "float16"


def set_precision(precision: str) -> None:
    """Sets Keras' global dtype policy; call before the model is built.

    `float16` and `bfloat16` compute in that type and keep float32 variables; the softmax
    stays float32 (see `trainer.model`).
    """
    if precision not in _KERAS_POLICIES:
        raise ValueError(f"mixed_precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    keras.mixed_precision.set_global_policy(_KERAS_POLICIES[precision])


def scaled_learning_rate(base_learning_rate: float, global_batch_size: int) -> float:
    """The linear scaling rule: `base_learning_rate` is the rate for a global batch of 32."""
    return base_learning_rate * global_batch_size / REFERENCE_BATCH_SIZE


class LinearWarmUp(keras.optimizers.schedules.LearningRateSchedule):
    """`initial` at step 0, rising linearly to `target` at `warmup_steps`, then `target`."""

    def __init__(self, initial: float, target: float, warmup_steps: int):
        self.initial = float(initial)
        self.target = float(target)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step: tf.Tensor) -> tf.Tensor:
        if not self.warmup_steps:
            return tf.constant(self.target, tf.float32)
        fraction = tf.minimum(tf.cast(step, tf.float32) / self.warmup_steps, 1.0)
        return self.initial + (self.target - self.initial) * fraction


def learning_rate_schedule(base_learning_rate: float, global_batch_size: int, warmup_steps: int,
                           decay: str = "none", total_steps: int = 0
                           ) -> keras.optimizers.schedules.LearningRateSchedule:
    """One stage's schedule over its `total_steps`: see the module docstring for `decay`."""
    target = scaled_learning_rate(base_learning_rate, global_batch_size)
    if decay == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            0.0, max(total_steps - warmup_steps, 1), warmup_target=target, warmup_steps=warmup_steps)
    if decay != "none":
        raise ValueError(f"decay must be one of {', '.join(DECAYS)}, got {decay!r}")
    return LinearWarmUp(min(base_learning_rate, target), target, warmup_steps if target > base_learning_rate else 0)


class ScaledAdam(keras.optimizers.Adam):
    """Adam whose learning rate is multiplied, per variable, by `scale_of(variable)`.

    Keras optimizers take one rate for every variable; scaling gradients instead would do
    nothing, since Adam divides them by their own running magnitude. The factors are read
    once, when the optimizer is built for its variables.
    """

    def __init__(self, learning_rate: keras.optimizers.schedules.LearningRateSchedule | float,
                 scale_of: Callable[[keras.Variable], float]):
        super().__init__(learning_rate=learning_rate)
        self._scale_of = scale_of
        self._scales: tuple[float, ...] = ()

    def build(self, variables: list[keras.Variable]) -> None:
        super().build(variables)
        self._scales = tuple(float(self._scale_of(variable)) for variable in variables)

    def update_step(self, gradient, variable, learning_rate):
        scale = self._scales[self._get_variable_index(variable)]
        super().update_step(gradient, variable, learning_rate * scale)


def build_optimizer(schedule: keras.optimizers.schedules.LearningRateSchedule, precision: str,
                    variables: list[keras.Variable], scale_of: Callable[[keras.Variable], float] = lambda variable: 1.0
                    ) -> keras.optimizers.Optimizer:
    """`ScaledAdam` for `variables`, built so a checkpoint can restore its slots; call in `strategy.scope()`.

    float16 wraps it in a LossScaleOptimizer: float16 gradients underflow without loss scaling.
    """
    optimizer = ScaledAdam(schedule, scale_of)
    if precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(variables)
    return optimizer
