"""Streams the preprocess job's TFRecord shards into training and evaluation batches.

The readers follow tensorflow/models official/: a per-worker share of the shuffled
file list, parallel interleaved reads of the GZIP shards, a shuffle buffer, parallel
parse + decode, batching, prefetch; decoded images are cached in memory when they fit. `inspect_data` checks everything
training relies on first, so a bad data dir fails with a clear message before a
model exists instead of with a stack trace in the middle of an epoch.
"""

import dataclasses

import numpy as np
import tensorflow as tf
from absl import logging
from google.protobuf import message as protobuf_message

from cxr_core import contract
from serving import features
from trainer.augment import augment_images

SHUFFLE_BUFFER_RECORDS = 4096  # Serialized records (~10 KB each at 128²); spans many augmented copies.
SHUFFLE_BUFFER_BYTES = 512 * 1024 * 1024  # Caps the buffer of decoded images at large image sizes.
MAX_PARALLEL_READS = 16
COUNT_BATCH = 1024


class DataError(ValueError):
    """The data dir cannot feed training; the message says what is wrong and where."""


@dataclasses.dataclass(frozen=True)
class SplitData:
    """One split's shards and its examples per class, counted from the records.

    For train every record counts; for val and test only originals
    (`image/augmentation == 0`), the examples evaluation actually reads.
    """

    name: str
    shards: tuple[str, ...]
    class_counts: tuple[int, ...]

    @property
    def num_examples(self) -> int:
        return sum(self.class_counts)


def list_shards(data_dir: str, split: str) -> list[str]:
    """Sorted shard paths of one split (local or gs://)."""
    return sorted(tf.io.gfile.glob(f"{data_dir.rstrip('/')}/{contract.shard_pattern(split)}"))


def inspect_data(data_dir: str, image_size: int) -> dict[str, SplitData]:
    """Validates the data dir and counts every split.

    A class missing from val or test only warns (the preprocess job warns too, and
    small datasets can lack one); its sensitivity and ROC-AUC are then undefined.

    Raises:
      DataError: the dir is missing or empty, a split has no shards or no records,
        a record does not match `cxr_core.contract`, or train lacks a class.
    """
    if not tf.io.gfile.isdir(data_dir):
        raise DataError(f"data dir {data_dir} does not exist; pass the --output_dir of "
                        "python -m beam_pipelines.preprocess as --data_dir")
    splits = {}
    for split in contract.SPLITS:
        shards = list_shards(data_dir, split)
        if not shards:
            raise DataError(f"no {split} shards ({contract.shard_pattern(split)}) in {data_dir}; "
                            "it must hold the output of python -m beam_pipelines.preprocess")
        originals_only = split != "train"
        _check_first_record(split, shards, image_size)
        counts = _count_classes(split, shards, originals_only)
        if not counts.sum():
            kind = "original (image/augmentation == 0) records" if originals_only else "records"
            raise DataError(f"split {split!r} has no {kind} in its {len(shards)} shard(s) in {data_dir}")
        missing = [name for name, count in zip(contract.CLASS_NAMES, counts) if not count]
        if missing and split == "train":
            raise DataError(
                f"split 'train' has no examples of class(es) {', '.join(missing)} "
                f"(counts: {dict(zip(contract.CLASS_NAMES, counts.tolist()))}); the model cannot "
                "learn a class it never sees: add data or change the split")
        if missing:
            logging.warning("split %r has no examples of class(es) %s: their sensitivity and ROC-AUC "
                            "there are undefined", split, ", ".join(missing))
        splits[split] = SplitData(split, tuple(shards), tuple(int(count) for count in counts))
    return splits


def validate_record(serialized: bytes, image_size: int) -> None:
    """Checks one serialized record against the schema; raises DataError listing every problem."""
    example = tf.train.Example()
    try:
        example.ParseFromString(serialized)
    except protobuf_message.DecodeError as error:
        raise DataError(f"the record is not a serialized tf.Example ({error})") from error
    feature = example.features.feature
    present = set(feature)
    problems = []
    if missing := sorted(contract.FEATURE_KEYS - present):
        problems.append(f"missing keys {missing}")
    if unexpected := sorted(present - contract.FEATURE_KEYS):
        problems.append(f"unexpected keys {unexpected}")
    for keys, kind in ((contract.BYTES_FEATURES, "bytes_list"), (contract.INT64_FEATURES, "int64_list")):
        for key in sorted(present.intersection(keys)):
            values = getattr(feature[key], kind).value
            if feature[key].WhichOneof("kind") != kind or len(values) != 1:
                problems.append(f"{key} must hold exactly one {kind} value")
    if problems:
        raise DataError("the record does not match beam_pipelines/contract.py: " + "; ".join(problems))

    image_format = feature[contract.IMAGE_FORMAT].bytes_list.value[0].decode("utf-8", "replace")
    if image_format != contract.IMAGE_FORMAT_PNG:
        raise DataError(f"image/format is {image_format!r}; the trainer reads {contract.IMAGE_FORMAT_PNG!r} only")
    height = feature[contract.IMAGE_HEIGHT].int64_list.value[0]
    width = feature[contract.IMAGE_WIDTH].int64_list.value[0]
    if (height, width) != (image_size, image_size):
        raise DataError(f"records hold {height}x{width} images but --image_size is {image_size}; "
                        f"pass --image_size {height} or preprocess again with --image_size {image_size}")
    label = feature[contract.LABEL].int64_list.value[0]
    if not 0 <= label < contract.NUM_CLASSES:
        raise DataError(f"image/class/label {label} is not a class id 0..{contract.NUM_CLASSES - 1}")
    try:
        pixels = tf.io.decode_png(feature[contract.IMAGE_ENCODED].bytes_list.value[0], channels=0)
    except tf.errors.InvalidArgumentError as error:
        raise DataError(f"image/encoded is not a readable PNG ({error.message})") from error
    if tuple(pixels.shape) != (height, width, 1) or pixels.dtype != tf.uint8:
        raise DataError(f"image/encoded must be an 8-bit grayscale {height}x{width} PNG; "
                        f"it decodes to shape {tuple(pixels.shape)} {pixels.dtype.name}")


def decoded_bytes(num_examples: float, image_size: int) -> int:
    """Memory that `num_examples` decoded uint8 images take in a tf.data cache."""
    return int(num_examples * image_size * image_size)


def choose_cache(mode: str, decoded_sizes: dict[str, int], budget_bytes: int) -> set[str]:
    """The splits whose decoded images are cached in memory after their first pass.

    `memory` caches every split, `none` none; `auto` caches splits in the given order while
    their decoded sizes together fit `budget_bytes`.
    """
    if mode == "memory":
        return set(decoded_sizes)
    if mode == "none":
        return set()
    if mode != "auto":
        raise ValueError(f"cache must be auto, memory or none, got {mode!r}")
    cached, used = set(), 0
    for split, size in decoded_sizes.items():
        if used + size <= budget_bytes:
            cached.add(split)
            used += size
    return cached


def train_dataset(split: SplitData, image_size: int, batch_size: int, seed: int,
                  input_context: tf.distribute.InputContext | None = None, cache: bool = False,
                  augment: bool = True, deterministic: bool = False) -> tf.data.Dataset:
    """Endless, shuffled (image, one-hot label) batches of `batch_size` for one input pipeline.

    With the `input_context` of `strategy.distribute_datasets_from_function`, each worker's
    pipeline reads its own share: every n-th shard when there are at least as many shards as
    pipelines, else (a deterministic read order, then) every n-th record. With `cache` the
    decoded uint8 images of the first pass stay in memory and later passes reshuffle them;
    otherwise the serialized records are shuffled and every pass decodes them again.
    With `augment`, each batch of uint8 pixels goes through `augment_images`
    (trainer/augment.py), after the cache, so every pass sees new transforms; nothing
    else augments: val, test and serving read the images as they are. With `deterministic`
    the order depends on `seed` alone; otherwise parallel reads and maps hand on whichever
    element is ready first.
    """
    pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    by_file = len(split.shards) >= pipelines
    files = tf.data.Dataset.from_tensor_slices(list(split.shards))
    if by_file:
        files = files.shard(pipelines, pipeline_id).shuffle(
            len(split.shards), seed=seed + pipeline_id, reshuffle_each_iteration=True)
    # Sharding records needs the same read order on every worker; sharding files does not.
    records = _interleave_records(files, len(split.shards), deterministic=None if by_file else True)
    if not by_file:
        records = records.shard(pipelines, pipeline_id)
    if cache:
        buffer = max(1, min(SHUFFLE_BUFFER_RECORDS, SHUFFLE_BUFFER_BYTES // decoded_bytes(1, image_size)))
        pixels = records.map(lambda record: _pixels_and_label(_parse(record), image_size),
                             num_parallel_calls=tf.data.AUTOTUNE)
        pixels = pixels.cache().shuffle(buffer, seed=seed + pipeline_id, reshuffle_each_iteration=True).repeat()
    else:
        records = records.shuffle(SHUFFLE_BUFFER_RECORDS, seed=seed + pipeline_id,
                                  reshuffle_each_iteration=True).repeat()
        pixels = records.map(lambda record: _pixels_and_label(_parse(record), image_size),
                             num_parallel_calls=tf.data.AUTOTUNE)
    batches = pixels.batch(batch_size, drop_remainder=True)
    if augment:
        batches = _augmented(batches, seed + pipeline_id, deterministic)
    dataset = batches.map(lambda images, labels: (features.model_input(images), features.one_hot_label(labels)),
                          num_parallel_calls=tf.data.AUTOTUNE)
    # Order within a pass is already random: unless asked to be reproducible, parallel maps may
    # hand on whichever element is ready.
    options = _options(deterministic)
    # strategy.distribute_datasets_from_function wraps this pipeline in a MultiDeviceIterator, which
    # does not cancel tf.data's autotuning thread when it is deleted: in TF 2.21 deleting it (and so
    # ending the process, or stopping for SIGTERM) then waits for that thread's next wake-up, up to a
    # minute. Without autotuning, AUTOTUNE parallelism means every core and prefetch buffers still
    # grow as needed; the throughput is the same on this pipeline.
    options.autotune.enabled = False
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)


def _augmented(batches: tf.data.Dataset, seed: int, deterministic: bool) -> tf.data.Dataset:
    """Batch number `step` is augmented with the stateless seed (seed, step): new every step, reproducible."""
    numbered = batches.scan(tf.constant(0, tf.int64), lambda step, batch: (step + 1, (step, batch)))
    return numbered.map(
        lambda step, batch: (augment_images(batch[0], tf.stack([tf.constant(seed, tf.int64), step])), batch[1]),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


def eval_dataset(split: SplitData, image_size: int, batch_size: int, cache: bool = False) -> tf.data.Dataset:
    """One pass over the originals (`image/augmentation == 0`) in a fixed order, last batch kept.

    Elements are (images, one-hot labels, `image/source` strings, `patient/id` strings):
    evaluation breaks its figures down by source, where a model that recognises the
    source shows itself, and resamples patients, not images, for its intervals. With
    `cache`, the decoded originals stay in memory for the next pass (per-epoch validation).
    """
    originals = _original_records(split).map(
        lambda record: (*_pixels_and_label(record, image_size), record[contract.SOURCE],
                        record[contract.PATIENT_ID]),
        num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        originals = originals.cache()
    batches = originals.map(
        lambda image, label, source, patient: (features.model_input(image), features.one_hot_label(label),
                                               source, patient),
        num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    return batches.prefetch(tf.data.AUTOTUNE).with_options(_options(deterministic=True))


def _original_records(split: SplitData) -> tf.data.Dataset:
    files = tf.data.Dataset.from_tensor_slices(list(split.shards))
    records = _interleave_records(files, len(split.shards), deterministic=True)
    parsed = records.map(_parse, num_parallel_calls=tf.data.AUTOTUNE)
    return parsed.filter(lambda record: tf.equal(record[contract.AUGMENTATION], 0))


def _interleave_records(files: tf.data.Dataset, num_files: int, deterministic: bool | None) -> tf.data.Dataset:
    return files.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type=contract.TFRECORD_COMPRESSION),
        cycle_length=min(num_files, MAX_PARALLEL_READS),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


def _parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    return tf.io.parse_single_example(serialized, features.parse_spec())


def _pixels_and_label(record: dict[str, tf.Tensor], image_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    return features.decode_pixels(record[contract.IMAGE_ENCODED], image_size), record[contract.LABEL]


def _options(deterministic: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = deterministic
    return options


def _check_first_record(split: str, shards: list[str], image_size: int) -> None:
    records = tf.data.TFRecordDataset(shards, compression_type=contract.TFRECORD_COMPRESSION).take(1)
    try:
        first = [record.numpy() for record in records]
    except tf.errors.DataLossError as error:
        raise DataError(f"split {split!r}: cannot read {shards[0]} as {contract.TFRECORD_COMPRESSION}-compressed "
                        f"TFRecords ({error.message})") from error
    if first:
        try:
            validate_record(first[0], image_size)
        except DataError as error:
            raise DataError(f"split {split!r} ({shards[0]}): {error}") from error


def _count_classes(split: str, shards: list[str], originals_only: bool) -> np.ndarray:
    """Examples per class in one pass that parses only the label and augmentation index."""
    spec = {contract.LABEL: tf.io.FixedLenFeature([], tf.int64),
            contract.AUGMENTATION: tf.io.FixedLenFeature([], tf.int64)}
    files = tf.data.Dataset.from_tensor_slices(shards)
    batches = _interleave_records(files, len(shards), deterministic=False).batch(COUNT_BATCH).map(
        lambda serialized: tf.io.parse_example(serialized, spec), num_parallel_calls=tf.data.AUTOTUNE)
    counts = np.zeros(contract.NUM_CLASSES, dtype=np.int64)
    try:
        for batch in batches.prefetch(tf.data.AUTOTUNE):
            labels = batch[contract.LABEL].numpy()
            if originals_only:
                labels = labels[batch[contract.AUGMENTATION].numpy() == 0]
            invalid = labels[(labels < 0) | (labels >= contract.NUM_CLASSES)]
            if invalid.size:
                raise DataError(f"split {split!r}: image/class/label {invalid[0]} is not a class id "
                                f"0..{contract.NUM_CLASSES - 1}")
            counts += np.bincount(labels, minlength=contract.NUM_CLASSES)
    except tf.errors.InvalidArgumentError as error:
        raise DataError(f"split {split!r}: a record does not match beam_pipelines/contract.py "
                        f"({error.message.splitlines()[0]})") from error
    except tf.errors.DataLossError as error:
        raise DataError(f"split {split!r}: a shard is not a readable {contract.TFRECORD_COMPRESSION}-compressed "
                        f"TFRecord file ({error.message.splitlines()[0]})") from error
    return counts
