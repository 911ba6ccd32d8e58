"""The TensorFlow-free tf.Example encoder: TensorFlow's bytes, in any process, and no TensorFlow import."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from beam_pipelines import example_codec
from cxr_core import contract, imaging

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = [
    example_codec.ExampleFields("pneumonia", "rsna-0123456789abcdef01234567", "rsna", "AP", "ab" * 32),
    example_codec.ExampleFields("covid19", "covid-ffff", "covid", "", "0" * 64, augmentation=29),
    example_codec.ExampleFields("normal", "csv-é-ü", "csv", "PA", "patient", augmentation=1),
    example_codec.ExampleFields("normal", "site-a-1", "site-a", "AP", "cd" * 32, sex="F", age_band="90+"),
]


def pixels(seed: int, size: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, size), dtype=np.uint8)


def tensorflow_example(png: bytes, size: int, fields: example_codec.ExampleFields) -> tf.train.Example:
    """The same record built with TensorFlow's own classes: the reference."""
    def text(value: str) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode("utf-8")]))

    def number(value: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    return tf.train.Example(features=tf.train.Features(feature={
        contract.IMAGE_ENCODED: tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
        contract.IMAGE_FORMAT: text(contract.IMAGE_FORMAT_PNG),
        contract.IMAGE_HEIGHT: number(size), contract.IMAGE_WIDTH: number(size),
        contract.LABEL: number(contract.CLASS_IDS[fields.label]), contract.LABEL_TEXT: text(fields.label),
        contract.IMAGE_ID: text(fields.image_id), contract.AUGMENTATION: number(fields.augmentation),
        contract.SOURCE: text(fields.source), contract.VIEW: text(fields.view),
        contract.PATIENT_ID: text(fields.patient_id), contract.PATIENT_SEX: text(fields.sex),
        contract.PATIENT_AGE_BAND: text(fields.age_band)}))


@pytest.mark.parametrize("index", range(len(FIELDS)))
def test_records_are_byte_identical_to_tensorflows(index):
    image = pixels(index)
    ours = example_codec.serialize_example(image, FIELDS[index])
    reference = tensorflow_example(imaging.encode_png(image), image.shape[0], FIELDS[index])
    assert ours == reference.SerializeToString(deterministic=True)
    assert tf.train.Example.FromString(ours) == reference


def test_sex_and_age_are_unknown_unless_given():
    fields = example_codec.ExampleFields("normal", "csv-1", "csv", "", "p")
    feature = example_codec.encode_example(b"png", 8, 8, fields).features.feature
    assert set(feature) == contract.FEATURE_KEYS
    assert feature[contract.PATIENT_SEX].bytes_list.value == feature[contract.PATIENT_AGE_BAND].bytes_list.value == [
        b"unknown"]


def test_unknown_label_is_refused():
    with pytest.raises(ValueError, match="unknown label"):
        example_codec.encode_example(b"png", 8, 8, example_codec.ExampleFields("flu", "x", "csv", "", "p"))


def test_another_process_writes_the_same_bytes():
    script = ("import sys, numpy as np; from beam_pipelines import example_codec as c; "
              "image = np.random.default_rng(0).integers(0, 256, size=(48, 48), dtype=np.uint8); "
              f"sys.stdout.buffer.write(c.serialize_example(image, c.{FIELDS[0]!r}))")
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True, cwd=REPOSITORY,
                           env=dict(os.environ, PYTHONPATH=REPOSITORY)).stdout
    assert other == example_codec.serialize_example(pixels(0), FIELDS[0])


def test_the_preprocess_job_does_not_import_tensorflow():
    """Its driver and every worker would otherwise pay ~2 s of CPU and ~740 MB each."""
    script = "import sys, beam_pipelines.preprocess; print('tensorflow' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            cwd=REPOSITORY, env=dict(os.environ, PYTHONPATH=REPOSITORY)).stdout.strip()
    assert loaded == "False"
