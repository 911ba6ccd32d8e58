"""WriteShardedTFRecords: sized shards whose TFRecord stream is byte for byte TensorFlow's, at least
--min_shards for train, every shard of a count written."""

import glob
import gzip
import os

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.testing.util import assert_that, equal_to

from beam_pipelines.tfrecord_shards import EncodedExample, WriteShardedTFRecords, shard_count, shard_order_key
from cxr_core import contract

RECORD_BYTES = 1000


def examples() -> list[EncodedExample]:
    """30 train and 4 val records of RECORD_BYTES each, some of them augmented copies."""
    made = []
    for split, count in (("train", 30), ("val", 4)):
        for index in range(count):
            key, copy = f"{split}-{index // 2}", index % 2
            payload = f"{key}/{copy}".encode().ljust(RECORD_BYTES, b".")
            made.append(EncodedExample(split, "normal", key, copy, payload))
    return made


def tensorflow_stream(records: list[bytes], path: str) -> bytes:
    """What TensorFlow's own (uncompressed) TFRecordWriter writes for `records`."""
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    with open(path, "rb") as handle:
        return handle.read()


def expected_counts(train_shards: int) -> list[int]:
    counts = [0] * train_shards
    for example in examples():
        if example.split == "train":
            counts[int(shard_order_key(example)[:15], 16) % train_shards] += 1
    return counts


def test_shards_are_sized_and_hold_tensorflows_stream(beam_pipeline, tmp_path):
    output_dir = str(tmp_path / "out")
    os.makedirs(output_dir)
    target = 10 * RECORD_BYTES  # 30 train records → 3 shards; 4 val records → 1 shard
    with beam_pipeline as pipeline:
        shards = pipeline | beam.Create(examples()) | WriteShardedTFRecords(output_dir, target, min_train_shards=1)
        assert_that(shards | "Summary" >> beam.Map(lambda shard: (shard["split"], shard["file"], shard["records"])),
                    equal_to([("train", contract.shard_name("train", index, 3), count)
                              for index, count in enumerate(expected_counts(3))]
                             + [("val", contract.shard_name("val", 0, 1), 4)]))
    written = sorted(glob.glob(os.path.join(output_dir, "*")))
    assert [os.path.basename(path) for path in written] == sorted(
        [contract.shard_name("train", index, 3) for index in range(3)] + [contract.shard_name("val", 0, 1)])

    by_name = {}
    for example in examples():
        order = shard_order_key(example)
        count = 3 if example.split == "train" else 1
        by_name.setdefault(contract.shard_name(example.split, int(order[:15], 16) % count, count), []).append(
            (order, example.serialized))
    for path in written:
        records = [serialized for _, serialized in sorted(by_name[os.path.basename(path)])]
        with gzip.open(path, "rb") as handle:
            assert handle.read() == tensorflow_stream(records, str(tmp_path / "reference.tfrecord"))
        read_back = [raw.numpy() for raw in tf.data.TFRecordDataset(path, compression_type="GZIP")]
        assert read_back == records


@pytest.mark.parametrize("total_bytes, minimum, expected", [(0, 1, 1), (250, 1, 3), (250, 16, 16), (2_000, 16, 20)])
def test_shard_count_covers_the_bytes_and_the_minimum(total_bytes, minimum, expected):
    assert shard_count(total_bytes, 100, minimum) == expected


def test_a_small_train_split_still_gets_the_minimum_of_shards(beam_pipeline, tmp_path):
    examples = [EncodedExample("train", "normal", f"train-{index}", 0, f"train record {index}".encode())
                for index in range(5)]
    examples += [EncodedExample("val", "normal", f"val-{index}", 0, f"val record {index}".encode())
                 for index in range(2)]

    written = (beam_pipeline
               | beam.Create(examples)
               | WriteShardedTFRecords(str(tmp_path), target_shard_bytes=10_000, min_train_shards=8)
               | beam.Map(lambda shard: (shard["file"], shard["records"])))
    counts = written | beam.combiners.ToList() | beam.Map(
        lambda shards: (sorted(name for name, _ in shards), sum(records for _, records in shards)))
    assert_that(counts, equal_to([(sorted([contract.shard_name("train", index, 8) for index in range(8)]
                                          + [contract.shard_name("val", 0, 1)]), 7)]))
    beam_pipeline.run().wait_until_finish()

    train_files = sorted(glob.glob(os.path.join(tmp_path, contract.shard_pattern("train"))))
    assert len(train_files) == 8  # At least 3 of them empty: the set is complete anyway.
    records = tf.data.TFRecordDataset(train_files, compression_type=contract.TFRECORD_COMPRESSION)
    assert sorted(record.numpy() for record in records) == sorted(example.serialized for example in examples[:5])
    assert not glob.glob(os.path.join(tmp_path, ".tmp-*"))
