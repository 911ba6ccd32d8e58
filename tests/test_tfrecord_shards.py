"""WriteShardedTFRecords: sized shards, at least --min_shards for train, every shard of a count written."""

import glob
import os

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.testing.util import assert_that, equal_to

from beam_pipelines import contract
from beam_pipelines.tfrecord_shards import EncodedExample, WriteShardedTFRecords, shard_count


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
