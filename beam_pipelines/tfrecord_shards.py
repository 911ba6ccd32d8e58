"""Writes each split's examples as GZIP TFRecord shards of a bounded size.

Beam's WriteToTFRecord needs the shard count when the pipeline is built, but the
right count depends on how many bytes each split ends up with. Here the count is
computed inside the pipeline (total bytes / target shard size, and for train at
least `min_train_shards`, so that every machine of a multi-worker training job reads
its own files), every example is assigned to a shard by a hash of its key, and each
shard is written by one worker to a temporary name and renamed into place
(`storage.atomic_output`), so a retried write replaces rather than duplicates it and
an interrupted one leaves no partial shard. Every shard of the count is written, empty
if no example hashed to it, so `-of-NNNNN` always names complete sets. Records inside a
shard are ordered by that hash, which spreads the augmented copies of one image instead
of keeping them adjacent.

Shards are framed by Beam's own TFRecord coder and GZIP-compressed by Beam's
filesystems, so the job's processes never import TensorFlow. The records, and the
TFRecord stream inside the GZIP container, are byte for byte what TensorFlow's
writer produces (tests/test_tfrecord_shards.py); the GZIP container itself may
differ, since zlib is called with its default memory level rather than TensorFlow's.
"""

import hashlib
import math
import typing
from collections.abc import Iterable, Iterator

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil

from beam_pipelines import storage
from cxr_core import contract

DEFAULT_TARGET_SHARD_MB = 150
# The contract names the compression as tf.data spells it ("GZIP"); Beam spells it "gzip".
COMPRESSION = getattr(CompressionTypes, contract.TFRECORD_COMPRESSION)
DEFAULT_MIN_TRAIN_SHARDS = 16


class EncodedExample(typing.NamedTuple):
    """One serialized record; `origin` names what it was made from (the preprocess job's listing row).

    `origin` is never written: it only lets `WriteShardedTFRecords` withhold the examples of
    an origin decided against after encoding.
    """

    split: str
    label: str
    key: str
    augmentation: int
    serialized: bytes
    origin: tuple = ()


def shard_order_key(example: EncodedExample) -> str:
    return hashlib.sha256(f"{example.key}\x1f{example.augmentation}".encode("utf-8")).hexdigest()


def shard_count(total_bytes: int, target_shard_bytes: int, minimum: int = 1) -> int:
    return max(minimum, 1, math.ceil(total_bytes / target_shard_bytes))


class WriteShardFn(beam.DoFn):
    """Writes one shard (all its records, in order; possibly none) and reports what it wrote."""

    def __init__(self, output_dir: str):
        self._output_dir = output_dir
        self._shards = beam.metrics.Metrics.counter("write", "shards_written")
        self._records = beam.metrics.Metrics.counter("write", "records_written")

    def process(self, element: tuple[tuple[str, int, int], dict[str, Iterable]]) -> Iterator[dict]:
        (split, index, count), grouped = element
        records = grouped["records"]
        name = contract.shard_name(split, index, count)
        written = size = 0
        with storage.atomic_output(f"{self._output_dir.rstrip('/')}/{name}") as local_path, \
                FileSystems.create(local_path, compression_type=COMPRESSION) as handle:
            for _, serialized in sorted(records):
                _TFRecordUtil.write_record(handle, serialized)
                written += 1
                size += len(serialized)
        self._shards.inc()
        self._records.inc(written)
        yield {"split": split, "file": name, "records": written, "bytes": size}


def example_size(example: EncodedExample) -> tuple[tuple, str, int]:
    """(origin, split, bytes): all that sizing the shards needs of an example."""
    return example.origin, example.split, len(example.serialized)


def size_kept(size: tuple[tuple, str, int], withheld: dict) -> bool:
    """True unless the example the size is of will be withheld."""
    return size[0] not in withheld


def assign_shard(example: EncodedExample, shard_counts: dict[str, int],
                 withheld: dict) -> list[tuple[tuple[str, int, int], tuple[str, bytes]]]:
    """((split, shard index, shard count), (order key, record)), or nothing for a withheld origin."""
    if example.origin in withheld:
        return []
    order = shard_order_key(example)
    count = shard_counts[example.split]
    return [((example.split, int(order[:15], 16) % count, count), (order, example.serialized))]


class WriteShardedTFRecords(beam.PTransform):
    """EncodedExamples → `{split}-SSSSS-of-NNNNN.tfrecord.gz`; outputs one dict per shard.

    `withheld`, if given, is a PCollection of (origin, anything): examples of those origins
    are not written. The examples wait for the shard counts anyway (every size must be
    known first), so withholding there costs no extra pass over them, and the shard counts
    are summed from small (origin, split, bytes) records, never from the examples again.
    """

    def __init__(self, output_dir: str, target_shard_bytes: int, min_train_shards: int = DEFAULT_MIN_TRAIN_SHARDS,
                 withheld: beam.PCollection | None = None):
        super().__init__()
        self._output_dir = output_dir
        self._target_shard_bytes = target_shard_bytes
        self._min_train_shards = min_train_shards
        self._withheld = withheld

    def expand(self, examples):
        target, min_train_shards = self._target_shard_bytes, self._min_train_shards

        def count_shards(split: str, total_bytes: int) -> tuple[str, int]:
            return split, shard_count(total_bytes, target, min_train_shards if split == "train" else 1)

        withheld = beam.pvalue.AsDict(self._withheld if self._withheld is not None
                                      else examples.pipeline | "NothingWithheld" >> beam.Create([]))
        counts = (examples
                  | "ExampleSizes" >> beam.Map(example_size)
                  | "SizesKept" >> beam.Filter(size_kept, withheld=withheld)
                  | "BytesPerSplit" >> beam.Map(lambda size: (size[1], size[2]))
                  | "SumBytes" >> beam.CombinePerKey(sum)
                  | "ShardCount" >> beam.MapTuple(count_shards))
        every_shard = counts | "EveryShard" >> beam.FlatMapTuple(
            lambda split, count: [((split, index, count), None) for index in range(count)])
        records = examples | "AssignShard" >> beam.FlatMap(
            assign_shard, shard_counts=beam.pvalue.AsDict(counts), withheld=withheld)
        return ({"shard": every_shard, "records": records}
                | "GroupShards" >> beam.CoGroupByKey()
                | "WriteShards" >> beam.ParDo(WriteShardFn(self._output_dir)))
