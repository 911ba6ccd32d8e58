"""Encodes a preprocessed image and its labels as tf.Examples (keys from `contract`), without TensorFlow.

The preprocess job's processes need the tf.Example message and nothing else from
TensorFlow, whose import costs each of them about 2 s of CPU and 740 MB of memory
(BENCHMARKS.md); a local job runs three such processes. So the message types of
TensorFlow's `tensorflow/core/example/feature.proto` and `example.proto` are given
to protobuf here, field for field, in a private descriptor pool (no clash with
TensorFlow's own when both are loaded), and protobuf does all of the encoding. A
record's bytes are exactly those of `tf.train.Example.SerializeToString(deterministic=True)`
for the same content; tests/test_example_codec.py checks that against TensorFlow.
tfx-bsl's C++ `RecordBatchToExamplesEncoder` was measured too and rejected: it orders
the feature map differently on every call, so reruns would not give the same bytes.
"""

import dataclasses
from collections.abc import Iterator

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from cxr_core import augmentation, contract, imaging
from cxr_core.demographics import UNKNOWN

_Field = descriptor_pb2.FieldDescriptorProto


def _tf_example_schema() -> descriptor_pb2.FileDescriptorProto:
    """TensorFlow's BytesList, FloatList, Int64List, Feature, Features and Example messages."""
    schema = descriptor_pb2.FileDescriptorProto(
        name="tensorflow/core/example/example.proto", package="tensorflow", syntax="proto3")
    for name, value_type in (("BytesList", _Field.TYPE_BYTES), ("FloatList", _Field.TYPE_FLOAT),
                             ("Int64List", _Field.TYPE_INT64)):
        schema.message_type.add(name=name).field.add(
            name="value", number=1, type=value_type, label=_Field.LABEL_REPEATED)
    feature = schema.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for number, (name, type_name) in enumerate(
            (("bytes_list", "BytesList"), ("float_list", "FloatList"), ("int64_list", "Int64List")), start=1):
        feature.field.add(name=name, number=number, type=_Field.TYPE_MESSAGE, label=_Field.LABEL_OPTIONAL,
                          type_name=f".tensorflow.{type_name}", oneof_index=0)
    features = schema.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=_Field.TYPE_STRING, label=_Field.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=_Field.TYPE_MESSAGE, label=_Field.LABEL_OPTIONAL,
                    type_name=".tensorflow.Feature")
    features.field.add(name="feature", number=1, type=_Field.TYPE_MESSAGE, label=_Field.LABEL_REPEATED,
                       type_name=".tensorflow.Features.FeatureEntry")
    schema.message_type.add(name="Example").field.add(
        name="features", number=1, type=_Field.TYPE_MESSAGE, label=_Field.LABEL_OPTIONAL,
        type_name=".tensorflow.Features")
    return schema


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_tf_example_schema())
Example, Features, Feature, BytesList, Int64List = (
    message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"tensorflow.{name}"))
    for name in ("Example", "Features", "Feature", "BytesList", "Int64List"))


@dataclasses.dataclass(frozen=True)
class ExampleFields:
    """Everything a record carries besides the pixels; ids are already pseudonymous, sex and age coarse."""

    label: str
    image_id: str
    source: str
    view: str
    patient_id: str
    augmentation: int = 0
    sex: str = UNKNOWN
    age_band: str = UNKNOWN


def _bytes(value: bytes | str) -> Feature:
    if isinstance(value, str):
        value = value.encode("utf-8")
    return Feature(bytes_list=BytesList(value=[value]))


def _int64(value: int) -> Feature:
    return Feature(int64_list=Int64List(value=[value]))


def encode_example(png: bytes, height: int, width: int, fields: ExampleFields) -> Example:
    """Builds the record with exactly the keys in `contract.FEATURE_KEYS`.

    The result has tf.train.Example's wire format but is not a `tf.train.Example`
    instance; `tf.train.Example.FromString(result.SerializeToString())` makes it one.
    """
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
        contract.PATIENT_SEX: _bytes(fields.sex),
        contract.PATIENT_AGE_BAND: _bytes(fields.age_band),
    }
    return Example(features=Features(feature=feature))


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


def fields_and_png(serialized: bytes) -> tuple[ExampleFields, bytes]:
    """What `serialize_example` was given, read back from its record: the fields and the PNG."""
    feature = Example.FromString(serialized).features.feature

    def text(key: str) -> str:
        return feature[key].bytes_list.value[0].decode("utf-8")

    fields = ExampleFields(label=text(contract.LABEL_TEXT), image_id=text(contract.IMAGE_ID),
                           source=text(contract.SOURCE), view=text(contract.VIEW),
                           patient_id=text(contract.PATIENT_ID),
                           augmentation=feature[contract.AUGMENTATION].int64_list.value[0],
                           sex=text(contract.PATIENT_SEX), age_band=text(contract.PATIENT_AGE_BAND))
    return fields, feature[contract.IMAGE_ENCODED].bytes_list.value[0]


def augmented_copies_of(original: bytes, copies: int, seed: int) -> Iterator[tuple[int, bytes]]:
    """(augmentation index, record) of the copies 1 .. `copies - 1` of an original's record.

    The same records `serialize_with_copies` makes from the decoded pixels: the original's
    PNG is lossless, so its pixels are those pixels bit for bit.
    """
    fields, png = fields_and_png(original)
    pixels = imaging.decode_png(png)
    for copy_index in range(1, copies):
        image = augmentation.augment(pixels, seed, fields.image_id, copy_index)
        yield copy_index, serialize_example(image, dataclasses.replace(fields, augmentation=copy_index))
