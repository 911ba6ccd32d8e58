"""The data contract between the data plane, the trainer and serving.

Every value more than one half depends on is defined here once: the tf.Example keys,
the classes and their order, the split names, shard naming and compression, the image
size limits and default, and the names of the exported serving signatures and their
inputs and outputs. Nothing else from a DICOM header may be written to a record:
`FEATURE_KEYS` is the complete set. This module imports neither Beam nor TensorFlow, so
the writer, the readers and the serving code can all import it, as tensorflow/models
keeps `tf_example_feature_key.py` for its writers and readers alike.
"""

from typing import Final

CLASS_NAMES: Final[tuple[str, ...]] = ("normal", "pneumonia", "covid19")
CLASS_IDS: Final[dict[str, int]] = {name: index for index, name in enumerate(CLASS_NAMES)}
NUM_CLASSES: Final[int] = len(CLASS_NAMES)

IMAGE_ENCODED: Final = "image/encoded"
IMAGE_FORMAT: Final = "image/format"
IMAGE_HEIGHT: Final = "image/height"
IMAGE_WIDTH: Final = "image/width"
LABEL: Final = "image/class/label"
LABEL_TEXT: Final = "image/class/text"
IMAGE_ID: Final = "image/id"
AUGMENTATION: Final = "image/augmentation"
SOURCE: Final = "image/source"
VIEW: Final = "image/view"
PATIENT_ID: Final = "patient/id"
# Coarse categories only (M/F/other/unknown; 10-year bands such as "40-49", "90+", or "unknown"),
# so that results can be read by sex and age without a record identifying anyone.
PATIENT_SEX: Final = "patient/sex"
PATIENT_AGE_BAND: Final = "patient/age_band"

IMAGE_FORMAT_PNG: Final = "png"

BYTES_FEATURES: Final[tuple[str, ...]] = (
    IMAGE_ENCODED, IMAGE_FORMAT, LABEL_TEXT, IMAGE_ID, SOURCE, VIEW, PATIENT_ID, PATIENT_SEX, PATIENT_AGE_BAND)
INT64_FEATURES: Final[tuple[str, ...]] = (IMAGE_HEIGHT, IMAGE_WIDTH, LABEL, AUGMENTATION)
FEATURE_KEYS: Final[frozenset[str]] = frozenset(BYTES_FEATURES + INT64_FEATURES)

SPLITS: Final[tuple[str, ...]] = ("train", "val", "test")
TFRECORD_SUFFIX: Final = ".tfrecord.gz"
TFRECORD_COMPRESSION: Final = "GZIP"  # tf.data's compression_type and TFRecordWriter's options name.
MANIFEST_FILE: Final = "manifest.json"
SCHEMA_VERSION: Final = 2

# Square image side in pixels. ResNet50 takes no less than 32; above 2048 a record no
# longer fits comfortably in a tf.data shuffle buffer.
DEFAULT_IMAGE_SIZE: Final = 128
MIN_IMAGE_SIZE: Final = 32
MAX_IMAGE_SIZE: Final = 2048

# The exported SavedModel's signatures, their inputs and their outputs (serving.export
# writes them; batch prediction, cxr-predict and any TF Serving client read them).
SERVING_EXAMPLES_SIGNATURE: Final = "serving_default"
SERVING_PNG_SIGNATURE: Final = "predict_png"
EXAMPLES_INPUT: Final = "examples"
PNG_INPUT: Final = "image_png"
PROBABILITIES_OUTPUT: Final = "probabilities"
CLASS_ID_OUTPUT: Final = "class_id"

# The SavedModel carries the contract it was trained under: a `metadata` signature without
# inputs returns these outputs, so serving needs no flag that repeats training's choices.
SERVING_METADATA_SIGNATURE: Final = "metadata"
METADATA_IMAGE_SIZE: Final = "image_size"
METADATA_CLASS_NAMES: Final = "class_names"
METADATA_PREPROCESSING_VERSION: Final = "preprocessing_version"
METADATA_TRAINING_CONFIG: Final = "training_config"
# JSON of `cxr_core.decision_rule.DecisionRule` (`null` for a model exported without one);
# the signatures above already apply it to their outputs.
METADATA_DECISION_RULE: Final = "decision_rule"
# The temperature T fitted on val (float64): the signatures above output softmax(log p / T),
# before the decision rule, so their probabilities are calibrated; 1.0 leaves them as they are.
METADATA_TEMPERATURE: Final = "temperature"
# The run's MODEL_CARD.md (Markdown): intended use, training data, evaluation, limits.
METADATA_MODEL_CARD: Final = "model_card"
# The test-time zooms (float64 [K], empty for none): the signatures above average the model's
# probabilities over the image and each zoom of it, before the temperature.
METADATA_TEST_TIME_ZOOMS: Final = "test_time_zooms"
# Version of the pixels a model sees: `imaging.preprocess_image` (file → uint8 square) and
# `serving.features.decode_image` (PNG → model input). Bump it when either changes, so a
# model trained on older pixels can be told apart.
PREPROCESSING_VERSION: Final = 1
# The served model's last convolutional block (ResNet50's), which Grad-CAM reads.
FEATURE_LAYER: Final = "conv5_block3_out"


def shard_pattern(split: str) -> str:
    """Glob (relative to the output dir) matching every shard of one split."""
    return f"{split}-*-of-*{TFRECORD_SUFFIX}"


def image_size_problem(image_size: int) -> str | None:
    """Why `image_size` cannot be used, or None; every flag that takes a size checks it here."""
    if MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        return None
    return f"image size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] pixels, got {image_size}"


def shard_name(split: str, index: int, count: int) -> str:
    """File name of one shard, e.g. `train-00003-of-00010.tfrecord.gz`."""
    return f"{split}-{index:05d}-of-{count:05d}{TFRECORD_SUFFIX}"
