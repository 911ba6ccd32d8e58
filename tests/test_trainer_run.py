"""Whole training runs on a tiny dataset: 2-replica MirroredStrategy, served export, resume.

The 2-replica run goes through `python -m trainer.task` in a subprocess, because the
CPU must be split into logical devices before TensorFlow initialises its devices.
ResNet50 starts from random weights (`none`): nothing is downloaded.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from beam_pipelines import contract
from beam_pipelines.synthesize import records as synthetic_records
from trainer import distribution, evaluation, features, input_pipeline, model, train

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE = 32
CLOUD_VARIABLES = ("TF_CONFIG", "CLOUD_ML_JOB_ID", "AIP_MODEL_DIR", "AIP_CHECKPOINT_DIR", "AIP_TENSORBOARD_LOG_DIR")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return synthetic_records.write_dataset(
        str(tmp_path_factory.mktemp("records")), IMAGE_SIZE, {"train": 8, "val": 4, "test": 4},
        {"train": 2}, augmented_copies=1)


@pytest.fixture(scope="module")
def two_replica_run(data_dir: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, subprocess.CompletedProcess]:
    job_dir = str(tmp_path_factory.mktemp("job"))
    environment = {name: value for name, value in os.environ.items() if name not in CLOUD_VARIABLES}
    completed = subprocess.run(
        [sys.executable, "-m", "trainer.task", f"--data_dir={data_dir}", f"--job_dir={job_dir}",
         f"--image_size={IMAGE_SIZE}", "--batch_size=4", "--stage1_epochs=1", "--stage2_epochs=1",
         "--steps_per_epoch=3", "--weights=none", "--class_weight=balanced", "--cpu_replicas=2", "--seed=3"],
        cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-6000:]
    return job_dir, completed


def test_two_replica_run_writes_every_output(two_replica_run):
    job_dir, completed = two_replica_run

    assert "MirroredStrategy with 2 replica(s) in sync" in completed.stderr
    assert "global batch 8, 3 steps per epoch" in completed.stderr
    with open(os.path.join(job_dir, "history.json")) as handle:
        epochs = json.load(handle)["epochs"]
    assert [(entry["stage"], entry["epoch"]) for entry in epochs] == [(1, 1), (2, 2)]
    assert all(np.isfinite(entry["loss"]) and "val_accuracy" in entry for entry in epochs)

    with open(os.path.join(job_dir, "eval", "metrics.json")) as handle:
        metrics = json.load(handle)
    for split in ("val", "test"):
        assert metrics[split]["num_examples"] == 12  # Originals only.
        assert set(metrics[split]["per_class"]) == set(contract.CLASS_NAMES)
        assert metrics[split]["by_source"][synthetic_records.SOURCE]["num_examples"] == 12
        assert 0.0 <= metrics[split]["macro"]["f1"] <= 1.0
    assert evaluation.VAL_HEADING in completed.stdout  # The printed report, test once and apart.
    assert completed.stdout.count(evaluation.TEST_HEADING) == 1
    for figure in ("confusion_matrix.png", "roc.png"):
        with Image.open(os.path.join(job_dir, "eval", figure)) as image:
            assert image.format == "PNG"

    checkpoints = set(os.listdir(os.path.join(job_dir, "checkpoints")))
    assert {"epoch-001.weights.h5", "epoch-002.weights.h5", "stage1.weights.h5", "stage2.weights.h5"} <= checkpoints
    assert not os.listdir(os.path.join(job_dir, "checkpoints", "backup", "chief"))  # Finished stages clean up.
    assert tf.io.gfile.glob(os.path.join(job_dir, "logs", "train", "events.out.tfevents.*"))
    assert os.path.exists(os.path.join(job_dir, "export", "saved_model.pb"))
    assert os.path.exists(os.path.join(job_dir, "model.keras"))


def test_exported_signatures_round_trip_examples_and_pngs(two_replica_run, data_dir):
    job_dir, _ = two_replica_run
    test_split = input_pipeline.inspect_data(data_dir, IMAGE_SIZE)["test"]
    serialized = [record.numpy() for record in tf.data.TFRecordDataset(test_split.shards, "GZIP").take(5)]
    pngs = [tf.train.Example.FromString(record).features.feature[contract.IMAGE_ENCODED].bytes_list.value[0]
            for record in serialized]
    unlabeled = tf.train.Example()
    unlabeled.features.feature[contract.IMAGE_ENCODED].bytes_list.value.append(pngs[0])

    served = tf.saved_model.load(os.path.join(job_dir, "export"))
    by_example = served.signatures[contract.SERVING_EXAMPLES_SIGNATURE]
    by_png = served.signatures[contract.SERVING_PNG_SIGNATURE]

    assert set(by_example.structured_input_signature[1]) == {contract.EXAMPLES_INPUT}
    assert by_example.structured_input_signature[1][contract.EXAMPLES_INPUT].shape.as_list() == [None]
    assert set(by_png.structured_input_signature[1]) == {contract.PNG_INPUT}
    from_examples = by_example(examples=tf.constant(serialized))
    from_pngs = by_png(image_png=tf.constant(pngs))
    assert from_examples["probabilities"].dtype == tf.float32
    assert from_examples["probabilities"].shape == (5, contract.NUM_CLASSES)
    assert from_examples["class_id"].dtype == tf.int64
    np.testing.assert_allclose(from_examples["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(from_examples["class_id"], np.argmax(from_examples["probabilities"], axis=1))
    np.testing.assert_allclose(from_pngs["probabilities"], from_examples["probabilities"], atol=1e-6)
    np.testing.assert_array_equal(from_pngs["class_id"], from_examples["class_id"])
    only_image = by_example(examples=tf.constant([unlabeled.SerializeToString()]))
    one_png = by_png(image_png=tf.constant(pngs[:1]))  # Same batch size: same kernels, same numerics.
    np.testing.assert_allclose(only_image["probabilities"], one_png["probabilities"], atol=1e-6)

    trained = keras.models.load_model(os.path.join(job_dir, "model.keras"))
    direct = trained(features.decode_images(tf.constant(pngs), IMAGE_SIZE), training=False)
    np.testing.assert_allclose(direct, from_examples["probabilities"], atol=1e-5)
    assert trained.get_layer(model.FEATURE_LAYER).output.shape[-1] == 2048  # Grad-CAM's layer.


class Preempted(RuntimeError):
    pass


class PreemptAfter(keras.callbacks.Callback):
    """Kills the run like a preemption once `epochs` epochs (counted across stages) are saved."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs
        self.finished = 0
        self.head_kernel = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.finished += 1
        if self.finished == self.epochs:
            self.head_kernel = self.model.get_layer("head_probabilities").kernel.numpy()
            raise Preempted(f"preempted after epoch {epoch + 1}")


class EpochRecorder(keras.callbacks.Callback):
    """Records which epochs a run starts (1-based) and the weights it starts them with."""

    def __init__(self):
        super().__init__()
        self.started: list[int] = []
        self.head_kernels: list[np.ndarray] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started.append(epoch + 1)
        self.head_kernels.append(self.model.get_layer("head_probabilities").kernel.numpy())


def test_a_restarted_run_resumes_at_the_stage_and_epoch_it_stopped(data_dir, tmp_path):
    job_dir = str(tmp_path / "job")
    config = train.TrainConfig(
        data_dir=data_dir, job_dir=job_dir, checkpoint_dir=f"{job_dir}/checkpoints",
        tensorboard_dir=f"{job_dir}/logs", image_size=IMAGE_SIZE, batch_size=4, stage1_epochs=1,
        stage2_epochs=2, steps_per_epoch=2, weights="none", seed=5, verbose=0)
    strategy = distribution.choose_strategy(cpu_replicas=1)
    preemption = PreemptAfter(epochs=2)  # Stage 1's only epoch, then stage 2's first.

    with pytest.raises(Preempted):
        train.run(config, strategy, extra_callbacks=[preemption])
    assert os.path.exists(f"{job_dir}/checkpoints/stage1.weights.h5")
    assert not os.path.exists(f"{job_dir}/checkpoints/stage2.weights.h5")

    restarted = EpochRecorder()
    metrics = train.run(config, strategy, extra_callbacks=[restarted])

    assert restarted.started == [3]  # Neither stage 1 nor stage 2's first epoch again.
    np.testing.assert_array_equal(restarted.head_kernels[0], preemption.head_kernel)
    with open(f"{job_dir}/history.json") as handle:
        epochs = json.load(handle)["epochs"]
    assert [(entry["stage"], entry["epoch"]) for entry in epochs] == [(1, 1), (2, 2), (2, 3)]
    assert os.path.exists(f"{job_dir}/checkpoints/stage2.weights.h5")
    assert set(metrics) == {"val", "test"}

    finished = EpochRecorder()
    train.run(config, strategy, extra_callbacks=[finished])  # Everything done: evaluate and export only.
    assert finished.started == []


def test_a_diverging_loss_stops_the_run_with_a_clear_error(data_dir, tmp_path):
    """A NaN learning rate makes the weights, then the loss, NaN after the first step."""
    job_dir = str(tmp_path / "job")
    config = train.TrainConfig(
        data_dir=data_dir, job_dir=job_dir, checkpoint_dir=f"{job_dir}/checkpoints",
        tensorboard_dir=f"{job_dir}/logs", image_size=IMAGE_SIZE, batch_size=4, stage1_epochs=2,
        stage2_epochs=1, stage1_learning_rate=float("nan"), steps_per_epoch=3, weights="none", verbose=0)

    with pytest.raises(train.TrainingDivergedError, match="stage 1: the training loss became nan in epoch 1"):
        train.run(config, distribution.choose_strategy(cpu_replicas=1))
    assert not os.path.exists(f"{job_dir}/checkpoints/stage1.weights.h5")
    assert not os.path.exists(f"{job_dir}/export")
