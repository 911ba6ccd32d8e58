"""ResNet50 with the seed project's classification head, and its two training stages.

The ResNet50 is built on the model's own input tensor, so all of its layers
(including `FEATURE_LAYER`, which Grad-CAM reads) are layers of the final model and
reachable with `model.get_layer`.

BatchNormalization depends on where the weights come from. A pretrained base keeps
its BatchNormalization in inference mode in both stages: those layers are never
trainable (Keras 3 runs non-trainable BatchNormalization with its moving statistics),
so fine-tuning on small batches cannot wreck the statistics learnt on ImageNet. A
randomly initialised base has no statistics to keep (mean 0, variance 1 make the layer
an identity, and 50 unnormalised layers feed the head noise), so its BatchNormalization
trains in both stages: it normalises with batch statistics and learns moving ones.

A random base also needs help to start learning through the seed head. The head's three
ReLU layers are the only unnormalised ones in the network, and they read 2048 pooled
features that are all positive: every Adam step moves a unit's input by up to the
learning rate × the features' sum, more than its whole spread, so before the base
carries any signal the noise of the first steps pushes the units below zero for every
image, where they stay (measured on the demo: 14% of the first layer's units silent at
the start, 96% after 150 steps, and the loss stuck at ln 3). Two measures keep it alive:
an auxiliary linear classifier on the pooled features adds its loss during training
(deep supervision, as GoogLeNet's auxiliary classifiers; `build_training_model`), so
the base learns the classes through a path without ReLUs, and the head learns at a
tenth of the base's rate (`FROM_SCRATCH_HEAD_LEARNING_RATE_SCALE`). The auxiliary
classifier is not part of the served model. A pretrained base needs neither: its
features carry signal from the first step.
"""

import os
import tempfile

import keras
import tensorflow as tf

from cxr_core import contract
from serving import features

INPUT_NAME = "image"
FEATURE_LAYER = contract.FEATURE_LAYER
HEAD_PREFIX = "head_"
HEAD_POOL_SIZE = 2
HEAD_UNITS = (256, 128, 64)
HEAD_DROPOUT_RATES = (0.5, 0.3, 0.2)
# Keras' 0.99 needs several hundred steps before the moving statistics that inference
# uses catch up with a randomly initialised network's; short runs would then evaluate
# on statistics far from the ones they trained with.
FROM_SCRATCH_BN_MOMENTUM = 0.9
POOLED_FEATURES_LAYER = f"{HEAD_PREFIX}global_average_pool"
AUXILIARY_LAYER = "auxiliary_probabilities"
FROM_SCRATCH_AUXILIARY_LOSS_WEIGHT = 1.0
FROM_SCRATCH_HEAD_LEARNING_RATE_SCALE = 0.1


def is_from_scratch(weights: str) -> bool:
    """Whether the `--weights` value asks for a randomly initialised ResNet50."""
    return weights.lower() == "none"


def resolve_weights(weights: str) -> str | None:
    """`none` → random init, `imagenet` → Keras download, else a local or gs:// weights file.

    A gs:// file is copied locally first because h5py reads local files only.
    """
    if is_from_scratch(weights):
        return None
    if weights.lower() == "imagenet":
        return "imagenet"
    if not tf.io.gfile.exists(weights):
        raise FileNotFoundError(f"--weights file {weights} does not exist; use imagenet, none or a weights file")
    if "://" not in weights:
        return weights
    local_copy = os.path.join(tempfile.mkdtemp(prefix="resnet50-weights-"), os.path.basename(weights))
    tf.io.gfile.copy(weights, local_copy)
    return local_copy


def build_model(image_size: int, weights: str | None) -> keras.Model:
    """ResNet50 (no top) + max pool, global average pool, 3 × (dense, dropout), softmax.

    Call inside `strategy.scope()`. `weights` comes from `resolve_weights`.
    """
    if problem := contract.image_size_problem(image_size):
        raise ValueError(problem)
    inputs = keras.Input(shape=(image_size, image_size, features.CHANNELS), name=INPUT_NAME)
    base = keras.applications.ResNet50(include_top=False, weights=weights, input_tensor=inputs)
    if weights is None:
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = FROM_SCRATCH_BN_MOMENTUM
    x = keras.layers.MaxPooling2D(HEAD_POOL_SIZE, padding="same", name=f"{HEAD_PREFIX}max_pool")(base.output)
    x = keras.layers.GlobalAveragePooling2D(name=POOLED_FEATURES_LAYER)(x)
    for index, (units, rate) in enumerate(zip(HEAD_UNITS, HEAD_DROPOUT_RATES), start=1):
        x = keras.layers.Dense(units, activation="relu", name=f"{HEAD_PREFIX}dense_{index}")(x)
        x = keras.layers.Dropout(rate, name=f"{HEAD_PREFIX}dropout_{index}")(x)
    # float32 softmax keeps probabilities exact under mixed precision.
    outputs = keras.layers.Dense(contract.NUM_CLASSES, activation="softmax", dtype="float32",
                                 name=f"{HEAD_PREFIX}probabilities")(x)
    return keras.Model(inputs, outputs, name="resnet50_cxr")


def build_training_model(model: keras.Model) -> keras.Model:
    """`model` plus a linear softmax classifier on its pooled features: outputs [probabilities, auxiliary].

    Shares every layer of `model`; only the auxiliary classifier is new. Call inside
    `strategy.scope()`. The trainer adds the auxiliary output's loss, weighted, to the
    head's; serving never sees it.
    """
    pooled = model.get_layer(POOLED_FEATURES_LAYER).output
    auxiliary = keras.layers.Dense(contract.NUM_CLASSES, activation="softmax", dtype="float32",
                                   name=AUXILIARY_LAYER)(pooled)
    return keras.Model(model.input, [model.output, auxiliary], name=f"{model.name}_training")


def is_head_variable(variable: keras.Variable) -> bool:
    """Whether `variable` belongs to the seed head (not to ResNet50 or the auxiliary classifier)."""
    return variable.path.startswith(HEAD_PREFIX)


def set_stage(model: keras.Model, stage: int, pretrained: bool) -> None:
    """Stage 1 trains the head only; stage 2 the whole network.

    BatchNormalization of a `pretrained` base (ImageNet or a weights file) never trains;
    that of a random base always trains, in stage 1 too, so it normalises the frozen
    convolutions' outputs. Changing `trainable` takes effect in the next traced training step.
    """
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = not pretrained
        elif layer.name.startswith(HEAD_PREFIX):
            layer.trainable = True
        else:
            layer.trainable = stage == 2
