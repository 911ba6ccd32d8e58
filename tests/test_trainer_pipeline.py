"""The trainer's input: PNG decoding, the tf.data readers, and bad data dirs failing early.

Bad inputs go through `train.run`, so each test also shows the error comes before a
model is built or anything is written to the job dir.
"""

import hashlib
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from beam_pipelines import example_codec
from cxr_core import contract, imaging
from serving import features
from synthetic import records as synthetic_records
from trainer import distribution, input_pipeline, train
from trainer.config import TrainConfig

IMAGE_SIZE = 32
PER_CLASS = {"train": 8, "val": 3, "test": 3}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """8 originals + 1 augmented copy per class in 2 train shards; 3 originals per class in val and test."""
    return synthetic_records.write_dataset(
        str(tmp_path_factory.mktemp("records")), IMAGE_SIZE, PER_CLASS, {"train": 2}, augmented_copies=1)


@pytest.fixture(scope="module")
def strategy() -> tf.distribute.Strategy:
    return distribution.choose_strategy(cpu_replicas=1)


def example(label: str = "normal", size: int = IMAGE_SIZE, augmentation: int = 0) -> tf.train.Example:
    pixels = np.full((size, size), 100, dtype=np.uint8)
    fields = example_codec.ExampleFields(label=label, image_id=f"{label}-0", source="test", view="PA",
                                         patient_id="0123abcd", augmentation=augmentation)
    record = example_codec.encode_example(imaging.encode_png(pixels), size, size, fields)
    return tf.train.Example.FromString(record.SerializeToString())


def write_records(path: str, records: list[bytes]) -> None:
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for record in records:
            writer.write(record)


def dataset_with(source_dir: str, target_dir: str, split: str, records: list[bytes]) -> str:
    """A copy of the good dataset whose `split` holds only `records`."""
    shutil.copytree(source_dir, target_dir)
    for path in input_pipeline.list_shards(target_dir, split):
        os.remove(path)
    write_records(os.path.join(target_dir, contract.shard_name(split, 0, 1)), records)
    return target_dir


def run_training(data_dir: str, job_dir: str, strategy: tf.distribute.Strategy) -> None:
    config = TrainConfig(data_dir=data_dir, job_dir=job_dir, checkpoint_dir=f"{job_dir}/checkpoints",
                               tensorboard_dir=f"{job_dir}/logs", image_size=IMAGE_SIZE, batch_size=4,
                               weights="none")
    train.run(config, strategy)


def test_decode_image_is_resnet50_preprocessing_of_the_gray_channel():
    pixels = (np.arange(IMAGE_SIZE * IMAGE_SIZE) % 256).astype(np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE)

    image = features.decode_image(tf.constant(imaging.encode_png(pixels)), IMAGE_SIZE).numpy()

    # keras.applications.resnet50 ("caffe"): BGR order, ImageNet channel means subtracted.
    expected = pixels[..., None].astype(np.float32) - np.array([103.939, 116.779, 123.68], np.float32)
    np.testing.assert_allclose(image, expected, atol=1e-4)
    batch = features.decode_images(tf.constant([imaging.encode_png(pixels)] * 2), IMAGE_SIZE)
    np.testing.assert_allclose(batch.numpy(), np.stack([image, image]))


def test_decode_image_rejects_a_png_of_another_size():
    png = imaging.encode_png(np.zeros((IMAGE_SIZE * 2, IMAGE_SIZE * 2), dtype=np.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"the model takes {IMAGE_SIZE}x{IMAGE_SIZE} PNGs"):
        features.decode_image(tf.constant(png), IMAGE_SIZE)


def test_inspect_data_counts_every_train_record_and_only_eval_originals(data_dir):
    data = input_pipeline.inspect_data(data_dir, IMAGE_SIZE)

    assert data["train"].class_counts == (16, 16, 16)
    assert len(data["train"].shards) == 2
    assert data["val"].class_counts == data["test"].class_counts == (3, 3, 3)


def in_order(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """The training dataset without its parallel maps' freedom to reorder, so passes end where they should."""
    options = tf.data.Options()
    options.deterministic = True
    return dataset.with_options(options)


def image_digests(dataset: tf.data.Dataset, batches: int) -> list[str]:
    """One digest per image of the first `batches` batches: identifies records across datasets."""
    return [hashlib.sha256(image.tobytes()).hexdigest()
            for images, _ in in_order(dataset).take(batches).as_numpy_iterator() for image in images]


@pytest.mark.parametrize("cache", [False, True])
def test_train_dataset_is_endless_shuffled_full_batches(data_dir, cache):
    split = input_pipeline.inspect_data(data_dir, IMAGE_SIZE)["train"]

    dataset = input_pipeline.train_dataset(split, IMAGE_SIZE, 8, seed=1, cache=cache, augment=False)

    assert dataset.element_spec[0].shape == (8, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert dataset.element_spec[1].shape == (8, contract.NUM_CLASSES)
    batches = list(in_order(dataset).take(2 * split.num_examples // 8))  # Two passes over the split.
    labels = np.concatenate([np.argmax(labels.numpy(), axis=-1) for _, labels in batches])
    np.testing.assert_array_equal(np.bincount(labels, minlength=3), [32, 32, 32])
    images = [hashlib.sha256(image.tobytes()).hexdigest() for images, _ in batches for image in images.numpy()]
    assert len(set(images)) == split.num_examples  # Every record once per pass ...
    assert sorted(images[:48]) == sorted(images[48:]) and images[:48] != images[48:]  # ... in a new order.


def test_the_training_pipeline_starts_no_autotuning_thread(data_dir):
    """A MultiDeviceIterator does not stop that thread when deleted: the process would wait for it."""
    split = input_pipeline.inspect_data(data_dir, IMAGE_SIZE)["train"]

    assert not input_pipeline.train_dataset(split, IMAGE_SIZE, 8, seed=1).options().autotune.enabled


def test_cached_and_streamed_images_are_the_same_tensors(data_dir):
    split = input_pipeline.inspect_data(data_dir, IMAGE_SIZE)["train"]
    batches = split.num_examples // 8

    streamed = image_digests(input_pipeline.train_dataset(split, IMAGE_SIZE, 8, seed=1, augment=False), batches)
    cached = image_digests(input_pipeline.train_dataset(split, IMAGE_SIZE, 8, seed=1, cache=True, augment=False),
                          3 * batches)

    assert sorted(streamed) == sorted(cached[:len(streamed)]) == sorted(cached[-len(streamed):])


@pytest.mark.parametrize("cache", [False, True])
def test_a_deterministic_train_dataset_repeats_its_augmented_batches_under_one_seed(data_dir, cache):
    split = input_pipeline.inspect_data(data_dir, IMAGE_SIZE)["train"]

    def batches(seed: int) -> list[bytes]:
        dataset = input_pipeline.train_dataset(split, IMAGE_SIZE, 8, seed=seed, cache=cache, deterministic=True)
        return [images.tobytes() + labels.tobytes() for images, labels in dataset.take(30).as_numpy_iterator()]

    assert batches(1) == batches(1) != batches(2)


def test_eval_dataset_reads_originals_once_in_a_fixed_order(data_dir):
    split = input_pipeline.inspect_data(data_dir, IMAGE_SIZE)["train"]  # The split with augmented copies.

    for dataset in (input_pipeline.eval_dataset(split, IMAGE_SIZE, batch_size=5),
                    input_pipeline.eval_dataset(split, IMAGE_SIZE, batch_size=5, cache=True)):
        first = np.concatenate([np.argmax(labels.numpy(), axis=-1) for _, labels, _, _ in dataset])
        second = np.concatenate([np.argmax(labels.numpy(), axis=-1) for _, labels, _, _ in dataset])
        assert len(first) == 24  # 8 originals per class, copies skipped, last batch kept.
        np.testing.assert_array_equal(first, second)
        sources = np.concatenate([sources.numpy() for _, _, sources, _ in dataset])
        assert set(sources.tolist()) == {synthetic_records.SOURCE.encode()}
        patients = np.concatenate([patients.numpy() for _, _, _, patients in dataset])
        assert len(patients) == 24 and all(patients)


def record_images(split: input_pipeline.SplitData) -> np.ndarray:
    """Every record's model input, unaugmented, as the eval reader decodes it."""
    dataset = tf.data.TFRecordDataset(list(split.shards), compression_type=contract.TFRECORD_COMPRESSION)
    return np.stack([features.decode_image(tf.io.parse_single_example(record, features.parse_spec())
                                           [contract.IMAGE_ENCODED], IMAGE_SIZE).numpy() for record in dataset])


@pytest.mark.parametrize("augment", [False, True])
def test_train_images_are_augmented_only_when_asked(data_dir, augment):
    split = input_pipeline.inspect_data(data_dir, IMAGE_SIZE)["train"]
    originals = record_images(split).reshape(split.num_examples, -1)

    images, _ = next(iter(input_pipeline.train_dataset(split, IMAGE_SIZE, 8, seed=1, augment=augment)))

    images = images.numpy().reshape(8, -1)
    nearest = np.abs(images[:, np.newaxis] - originals[np.newaxis]).mean(axis=-1).min(axis=1)
    if augment:
        assert (nearest > 1.0).all(), "each image is transformed"
    else:
        np.testing.assert_array_equal(nearest, 0.0)  # Each image is a record's, untouched.


@pytest.mark.parametrize("pipelines", [2, 3])  # 2 shards: one each, then too few to go round.
def test_each_worker_pipeline_reads_its_own_share_of_the_records(data_dir, pipelines):
    split = input_pipeline.inspect_data(data_dir, IMAGE_SIZE)["train"]
    share = split.num_examples // pipelines

    shares = [image_digests(input_pipeline.train_dataset(
        split, IMAGE_SIZE, 1, seed=1, input_context=tf.distribute.InputContext(pipelines, index, pipelines),
        augment=False), share)
        for index in range(pipelines)]

    assert all(len(set(digests)) == share for digests in shares)  # One pass over its share, no repeats.
    assert len(set().union(*map(set, shares))) == split.num_examples  # Disjoint shares covering the split.


def test_auto_cache_fills_the_budget_in_split_order():
    sizes = {"train": 3_000, "val": 500}

    assert input_pipeline.choose_cache("auto", sizes, 4_000) == {"train", "val"}
    assert input_pipeline.choose_cache("auto", sizes, 3_200) == {"train"}
    assert input_pipeline.choose_cache("auto", sizes, 1_000) == {"val"}
    assert input_pipeline.choose_cache("memory", sizes, 0) == {"train", "val"}
    assert input_pipeline.choose_cache("none", sizes, 10_000) == set()
    assert input_pipeline.decoded_bytes(61_440, 128) == 61_440 * 128 * 128  # ~1 GB: the default budget holds it.


def test_class_weights_balance_the_train_counts():
    assert train.class_weights("none", (10, 30, 60)) is None
    weights = train.class_weights("balanced", (10, 30, 60))
    assert weights == pytest.approx({0: 100 / 30, 1: 100 / 90, 2: 100 / 180})
    assert sum(weights[index] * count for index, count in enumerate((10, 30, 60))) == pytest.approx(100)


def test_cluster_size_counts_chief_and_workers():
    assert distribution.cluster_size("{}") == 1
    assert distribution.cluster_size('{"cluster": {"chief": ["a:1"]}, "task": {"type": "chief"}}') == 1
    assert distribution.cluster_size('{"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]}}') == 3


def test_missing_data_dir(tmp_path, strategy):
    with pytest.raises(input_pipeline.DataError, match="does not exist"):
        run_training(str(tmp_path / "absent"), str(tmp_path / "job"), strategy)
    assert not (tmp_path / "job").exists()


def test_empty_data_dir(tmp_path, strategy):
    (tmp_path / "data").mkdir()
    with pytest.raises(input_pipeline.DataError, match=r"no train shards \(train-\*-of-\*.tfrecord.gz\)"):
        run_training(str(tmp_path / "data"), str(tmp_path / "job"), strategy)
    assert not (tmp_path / "job").exists()


def test_split_without_records(data_dir, tmp_path, strategy):
    bad = dataset_with(data_dir, str(tmp_path / "data"), "val", [])
    with pytest.raises(input_pipeline.DataError, match=r"split 'val' has no original .* records"):
        run_training(bad, str(tmp_path / "job"), strategy)


def test_eval_split_with_augmented_copies_only(data_dir, tmp_path, strategy):
    copies = [example(label, augmentation=1).SerializeToString() for label in contract.CLASS_NAMES]
    bad = dataset_with(data_dir, str(tmp_path / "data"), "test", copies)
    with pytest.raises(input_pipeline.DataError, match=r"split 'test' has no original \(image/augmentation == 0\)"):
        run_training(bad, str(tmp_path / "job"), strategy)


def test_val_or_test_without_a_class_only_warns(data_dir, tmp_path):
    records = [example(label).SerializeToString() for label in ("normal", "pneumonia")]
    partial = dataset_with(data_dir, str(tmp_path / "data"), "val", records)

    assert input_pipeline.inspect_data(partial, IMAGE_SIZE)["val"].class_counts == (1, 1, 0)


def test_train_without_a_class(data_dir, tmp_path, strategy):
    records = [example(label).SerializeToString() for label in ("normal", "pneumonia") for _ in range(8)]
    bad = dataset_with(data_dir, str(tmp_path / "data"), "train", records)
    with pytest.raises(input_pipeline.DataError, match="split 'train' has no examples of class.*covid19"):
        run_training(bad, str(tmp_path / "job"), strategy)
    assert not (tmp_path / "job").exists()


def without(record: tf.train.Example, key: str) -> tf.train.Example:
    del record.features.feature[key]
    return record


def with_feature(record: tf.train.Example, key: str, feature: tf.train.Feature) -> tf.train.Example:
    record.features.feature[key].CopyFrom(feature)
    return record


@pytest.mark.parametrize("first_record, message", [
    (b"\xff\x00 not a protocol buffer", "not a serialized tf.Example"),
    (without(example(), contract.LABEL).SerializeToString(), r"missing keys \['image/class/label'\]"),
    (with_feature(example(), "patient/name", tf.train.Feature()).SerializeToString(),
     r"unexpected keys \['patient/name'\]"),
    (with_feature(example(), contract.LABEL, tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"0"])))
     .SerializeToString(), "image/class/label must hold exactly one int64_list value"),
    (example(size=IMAGE_SIZE * 2).SerializeToString(),
     f"records hold 64x64 images but --image_size is {IMAGE_SIZE}"),
    (with_feature(example(), contract.IMAGE_ENCODED, tf.train.Feature(
        bytes_list=tf.train.BytesList(value=[b"not a png"]))).SerializeToString(), "not a readable PNG"),
])
def test_first_record_not_matching_the_schema(data_dir, tmp_path, strategy, first_record, message):
    bad = dataset_with(data_dir, str(tmp_path / "data"), "val", [first_record])
    with pytest.raises(input_pipeline.DataError, match=f"split 'val' .*{message}"):
        run_training(bad, str(tmp_path / "job"), strategy)


def test_later_record_not_matching_the_schema(data_dir, tmp_path, strategy):
    records = [example(label).SerializeToString() for label in contract.CLASS_NAMES]
    records.append(without(example(), contract.AUGMENTATION).SerializeToString())
    bad = dataset_with(data_dir, str(tmp_path / "data"), "test", records)
    with pytest.raises(input_pipeline.DataError, match="split 'test': a record does not match"):
        run_training(bad, str(tmp_path / "job"), strategy)


def test_shard_that_is_not_gzip(data_dir, tmp_path, strategy):
    bad = dataset_with(data_dir, str(tmp_path / "data"), "val", [])
    with tf.io.TFRecordWriter(os.path.join(bad, contract.shard_name("val", 0, 1))) as writer:
        writer.write(example().SerializeToString())
    with pytest.raises(input_pipeline.DataError, match="cannot read .* as GZIP-compressed TFRecords"):
        run_training(bad, str(tmp_path / "job"), strategy)
