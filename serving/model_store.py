"""Loads an exported model together with the contract it was trained under.

The trainer's SavedModel answers its `metadata` signature (`contract.SERVING_METADATA_SIGNATURE`,
no inputs) with the image size, the class names in output order, the preprocessing
version, the training configuration, the test-time zooms, the temperature and the decision
rule its signatures apply (both chosen on val; a model exported without a rule predicts the
argmax), and its model card. Batch prediction and `cxr-predict` both load models here, so
neither needs a flag that repeats a choice made at training time. An export without that
signature, or with an incomplete one, is refused.
"""

import dataclasses
import json
import os
from typing import Any

import tensorflow as tf

from cxr_core import contract as data_contract
from cxr_core.decision_rule import DecisionRule

EXPORT_DIR = "export"


class ModelStoreError(Exception):
    """No usable SavedModel where one was expected, or one this code cannot serve; says why."""


@dataclasses.dataclass(frozen=True)
class ModelContract:
    """What a model needs from its inputs and what its outputs mean."""

    image_size: int
    class_names: tuple[str, ...]
    preprocessing_version: int
    training_config: dict[str, Any]
    decision_rule: DecisionRule | None = None  # None: the argmax of the model's raw probabilities.
    temperature: float = 1.0  # Applied before the rule: softmax(log p / T).
    model_card: str = ""  # The run's MODEL_CARD.md.
    test_time_zooms: tuple[float, ...] = ()  # `serving.test_time_augmentation`; () reads the image alone.

    def as_tensors(self) -> dict[str, tf.Tensor]:
        """The `metadata` signature's outputs."""
        return {
            data_contract.METADATA_IMAGE_SIZE: tf.constant(self.image_size, tf.int64),
            data_contract.METADATA_CLASS_NAMES: tf.constant(list(self.class_names), tf.string),
            data_contract.METADATA_PREPROCESSING_VERSION: tf.constant(self.preprocessing_version, tf.int64),
            data_contract.METADATA_TRAINING_CONFIG: tf.constant(json.dumps(self.training_config, sort_keys=True)),
            data_contract.METADATA_DECISION_RULE: tf.constant(
                json.dumps(self.decision_rule.to_json() if self.decision_rule else None)),
            data_contract.METADATA_TEMPERATURE: tf.constant(self.temperature, tf.float64),
            data_contract.METADATA_MODEL_CARD: tf.constant(self.model_card),
            data_contract.METADATA_TEST_TIME_ZOOMS: tf.constant(self.test_time_zooms, tf.float64, shape=[
                len(self.test_time_zooms)]),
        }

    @classmethod
    def from_tensors(cls, outputs: dict[str, tf.Tensor]) -> "ModelContract":
        """Raises ValueError when the decision rule is for other classes."""
        rule = json.loads(outputs[data_contract.METADATA_DECISION_RULE].numpy().decode("utf-8"))
        return cls(
            image_size=int(outputs[data_contract.METADATA_IMAGE_SIZE]),
            class_names=tuple(name.decode("utf-8") for name in outputs[data_contract.METADATA_CLASS_NAMES].numpy()),
            preprocessing_version=int(outputs[data_contract.METADATA_PREPROCESSING_VERSION]),
            training_config=json.loads(outputs[data_contract.METADATA_TRAINING_CONFIG].numpy().decode("utf-8")),
            decision_rule=None if rule is None else DecisionRule.from_json(rule),
            temperature=float(outputs[data_contract.METADATA_TEMPERATURE]),
            model_card=outputs[data_contract.METADATA_MODEL_CARD].numpy().decode("utf-8"),
            test_time_zooms=tuple(float(zoom) for zoom in outputs[data_contract.METADATA_TEST_TIME_ZOOMS].numpy()),
        )


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A loaded SavedModel: its folder, signatures and contract."""

    export_dir: str
    signatures: dict[str, Any]  # Name → concrete function.
    contract: ModelContract
    module: Any  # The loaded object; it owns the variables the signatures read.


def find_export_dir(model_dir: str) -> str:
    """`model_dir` itself or its `export/` subfolder, whichever holds a SavedModel."""
    for candidate in (model_dir, os.path.join(model_dir, EXPORT_DIR)):
        if tf.io.gfile.exists(os.path.join(candidate, tf.saved_model.SAVED_MODEL_FILENAME_PB)):
            return candidate
    raise ModelStoreError(f"{model_dir} holds no SavedModel; pass the trainer's job dir or its {EXPORT_DIR}/ folder")


def load(model_dir: str) -> LoadedModel:
    """Loads the SavedModel of a job dir (or of its `export/` folder) and reads its contract.

    Raises:
      ModelStoreError: no SavedModel there, no contract (the `metadata` signature) or an
        incomplete one, or a contract this code cannot serve (other classes, or another
        preprocessing version).
    """
    export_dir = find_export_dir(model_dir)
    module = tf.saved_model.load(export_dir)
    signatures = dict(module.signatures)
    if data_contract.SERVING_METADATA_SIGNATURE not in signatures:
        raise ModelStoreError(f"the model in {export_dir} cannot be served: this export has no metadata signature: "
                              "re-export it with the current trainer")
    try:
        model_contract = ModelContract.from_tensors(signatures[data_contract.SERVING_METADATA_SIGNATURE]())
    except KeyError as error:
        raise ModelStoreError(f"the model in {export_dir} cannot be served: its metadata signature lacks {error}: "
                              "re-export it with the current trainer") from error
    except ValueError as error:
        raise ModelStoreError(f"the model in {export_dir} has an unusable decision rule: {error}") from error
    if problem := contract_problem(model_contract):
        raise ModelStoreError(f"the model in {export_dir} {problem}")
    return LoadedModel(export_dir, signatures, model_contract, module)


def contract_problem(model_contract: ModelContract) -> str | None:
    """Why this code cannot serve a model with `model_contract`, or None."""
    if model_contract.class_names != data_contract.CLASS_NAMES:
        return (f"predicts classes {list(model_contract.class_names)}, but this code reports "
                f"{list(data_contract.CLASS_NAMES)}")
    if model_contract.preprocessing_version != data_contract.PREPROCESSING_VERSION:
        return (f"was trained on preprocessing version {model_contract.preprocessing_version}, but this code "
                f"prepares images with version {data_contract.PREPROCESSING_VERSION}")
    if problem := data_contract.image_size_problem(model_contract.image_size):
        return f"has an unusable {problem}"
    return None

