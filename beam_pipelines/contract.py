"""The data contract between the preprocess job and the trainer.

Both halves import the tf.Example keys, the class list and the file naming from here,
so the schema exists in exactly one place. Nothing else from a DICOM header may be
written to a record: `FEATURE_KEYS` is the complete set.
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

IMAGE_FORMAT_PNG: Final = "png"

BYTES_FEATURES: Final[tuple[str, ...]] = (
    IMAGE_ENCODED, IMAGE_FORMAT, LABEL_TEXT, IMAGE_ID, SOURCE, VIEW, PATIENT_ID)
INT64_FEATURES: Final[tuple[str, ...]] = (IMAGE_HEIGHT, IMAGE_WIDTH, LABEL, AUGMENTATION)
FEATURE_KEYS: Final[frozenset[str]] = frozenset(BYTES_FEATURES + INT64_FEATURES)

SPLITS: Final[tuple[str, ...]] = ("train", "val", "test")
TFRECORD_SUFFIX: Final = ".tfrecord.gz"
MANIFEST_FILE: Final = "manifest.json"
SCHEMA_VERSION: Final = 1


def shard_pattern(split: str) -> str:
    """Glob (relative to the output dir) matching every shard of one split."""
    return f"{split}-*-of-*{TFRECORD_SUFFIX}"


def shard_name(split: str, index: int, count: int) -> str:
    """File name of one shard, e.g. `train-00003-of-00010.tfrecord.gz`."""
    return f"{split}-{index:05d}-of-{count:05d}{TFRECORD_SUFFIX}"
