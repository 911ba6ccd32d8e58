"""Encodes a preprocessed image and its labels as tf.Examples (keys from `contract`)."""

import dataclasses
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from beam_pipelines import augmentation, contract, imaging


@dataclasses.dataclass(frozen=True)
class ExampleFields:
    """Everything a record carries besides the pixels; ids are already pseudonymous."""

    label: str
    image_id: str
    source: str
    view: str
    patient_id: str
    augmentation: int = 0


def _bytes(value: bytes | str) -> tf.train.Feature:
    if isinstance(value, str):
        value = value.encode("utf-8")
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def encode_example(png: bytes, height: int, width: int, fields: ExampleFields) -> tf.train.Example:
    """Builds the record with exactly the keys in `contract.FEATURE_KEYS`."""
    if fields.label not in contract.CLASS_IDS:
        raise ValueError(f"unknown label {fields.label!r}; expected one of {contract.CLASS_NAMES}")
    feature = {
        contract.IMAGE_ENCODED: _bytes(png),
        contract.IMAGE_FORMAT: _bytes(contract.IMAGE_FORMAT_PNG),
        contract.IMAGE_HEIGHT: _int64(height),
        contract.IMAGE_WIDTH: _int64(width),
        contract.LABEL: _int64(contract.CLASS_IDS[fields.label]),
        contract.LABEL_TEXT: _bytes(fields.label),
        contract.IMAGE_ID: _bytes(fields.image_id),
        contract.AUGMENTATION: _int64(fields.augmentation),
        contract.SOURCE: _bytes(fields.source),
        contract.VIEW: _bytes(fields.view),
        contract.PATIENT_ID: _bytes(fields.patient_id),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def serialize_example(pixels: np.ndarray, fields: ExampleFields) -> bytes:
    """PNG-encodes a preprocessed image and serializes its record.

    Serialization is deterministic (sorted feature map), so the same image and fields
    give the same bytes in any process: reruns produce identical shards.
    """
    height, width = pixels.shape
    example = encode_example(imaging.encode_png(pixels), height, width, fields)
    return example.SerializeToString(deterministic=True)


def serialize_with_copies(pixels: np.ndarray, fields: ExampleFields, copies: int,
                          seed: int) -> Iterator[tuple[int, bytes]]:
    """(augmentation index, record) for the original and its `copies - 1` augmented copies.

    The one copy-and-encode step: the preprocess job, the synthetic records and the
    benchmark's reference loop all call it, so their records cannot drift apart.
    """
    for copy_index in range(copies):
        image = pixels if copy_index == 0 else augmentation.augment(pixels, seed, fields.image_id, copy_index)
        yield copy_index, serialize_example(image, dataclasses.replace(fields, augmentation=copy_index))
