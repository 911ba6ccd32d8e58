"""Real trainer processes: a chief and a worker on loopback ports, a killed worker, a SIGTERM.

Every job is `python -m trainer.task` in subprocesses, as Vertex AI runs it: a cluster
gets TF_CONFIG with free 127.0.0.1 ports and trains under MultiWorkerMirroredStrategy;
the single-process job splits the CPU into 2 replicas (MirroredStrategy). ResNet50
starts from random weights at 32², a few steps per epoch: the tests check the loop, the
checkpoints and the export, not accuracy. They read what the trainer writes for people and
programs alike (history.json, config.json, the checkpoints, TensorBoard's event files), never
its log wording. Every process started here is killed in a `finally`, whatever the outcome.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Collection, Iterator
from typing import TypeVar

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from cxr_core import contract, decision_rule
from serving import features, model_store
from synthetic import records as synthetic_records
from trainer import checkpoints, evaluate, input_pipeline, preemption
from trainer.evaluation import calibration, report

Found = TypeVar("Found")

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE = 32
PHASE_TIMEOUT = 600
CLOUD_VARIABLES = ("TF_CONFIG", "CLOUD_ML_JOB_ID", "AIP_MODEL_DIR", "AIP_CHECKPOINT_DIR", "AIP_TENSORBOARD_LOG_DIR")
COMMON_FLAGS = (f"--image_size={IMAGE_SIZE}", "--batch_size=2", "--weights=none", "--steps_per_loop=1", "--seed=3")
# Every test starts trainer processes on loopback ports.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """4 train shards (2 per worker) of 24 records; 6 originals in val and in test."""
    return synthetic_records.write_dataset(
        str(tmp_path_factory.mktemp("records")), IMAGE_SIZE, {"train": 4, "val": 2, "test": 2}, {"train": 4},
        augmented_copies=1)


class Trainer:
    """One `python -m trainer.task` process writing its log to a file (no pipe to fill up)."""

    def __init__(self, name: str, log_path: str, flags: list[str], tf_config: dict | None = None,
                 scratch_dir: str | None = None):
        self.name = name
        self.log_path = log_path
        environment = {name: value for name, value in os.environ.items() if name not in CLOUD_VARIABLES}
        environment["TF_CPP_MIN_LOG_LEVEL"] = "2"
        if tf_config:
            environment["TF_CONFIG"] = json.dumps(tf_config)
        if scratch_dir:
            environment["TMPDIR"] = scratch_dir
        with open(log_path, "w") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "trainer.task", *flags], cwd=REPOSITORY,
                                            env=environment, stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        with open(self.log_path) as log:
            return log.read()

    def wait(self) -> int:
        try:
            return self.process.wait(timeout=PHASE_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} did not finish in {PHASE_TIMEOUT} s:\n{self.log()[-4000:]}")


@contextlib.contextmanager
def started() -> Iterator[list[Trainer]]:
    """Collects the processes a test starts; kills every one still running on the way out."""
    trainers: list[Trainer] = []
    try:
        yield trainers
    finally:
        for trainer in trainers:
            if trainer.process.poll() is None:
                trainer.process.kill()
            trainer.process.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_cluster(trainers: list[Trainer], flags: list[str], log_dir: str, attempt: str,
                  scratch_dir: str | None = None) -> tuple[Trainer, Trainer]:
    """A chief and a worker, as Vertex AI's TF_CONFIG describes two replicas (on fresh ports)."""
    cluster = {"chief": [f"127.0.0.1:{free_port()}"], "worker": [f"127.0.0.1:{free_port()}"]}
    for task_type in ("chief", "worker"):
        trainers.append(Trainer(f"{task_type} ({attempt})", os.path.join(log_dir, f"{task_type}-{attempt}.log"),
                                flags, {"cluster": cluster, "task": {"type": task_type, "index": 0}},
                                scratch_dir if task_type == "worker" else None))
    return trainers[-2], trainers[-1]


def wait_until(condition: Callable[[], Found | None], what: str, processes: list[Trainer]) -> Found:
    """The first truthy value of `condition()`, polled; fails if one of `processes` ends first."""
    deadline = time.monotonic() + PHASE_TIMEOUT
    while time.monotonic() < deadline:
        if found := condition():
            return found
        for process in processes:
            if process.process.poll() is not None:
                pytest.fail(f"{process.name} ended with {process.process.returncode} before {what}:\n"
                            f"{process.log()[-4000:]}")
        time.sleep(0.5)
    pytest.fail(f"no {what} in {PHASE_TIMEOUT} s:\n{processes[0].log()[-4000:]}")


def assert_finished(*trainers: Trainer) -> None:
    codes = [trainer.wait() for trainer in trainers]
    assert codes == [0] * len(trainers), "\n\n".join(f"{t.name}:\n{t.log()[-4000:]}" for t in trainers)


def history(job_dir: str) -> list[tuple[int, int]]:
    with open(os.path.join(job_dir, "history.json")) as handle:
        return [(entry["stage"], entry["epoch"]) for entry in json.load(handle)["epochs"]]


def run_description(job_dir: str) -> dict:
    with open(os.path.join(job_dir, "config.json")) as handle:
        return json.load(handle)


def event_files(job_dir: str) -> set[str]:
    """The chief's TensorBoard event files of the training loops, one per process that trained."""
    return set(tf.io.gfile.glob(os.path.join(job_dir, "logs", "train", "events.out.tfevents.*")))


def logged_steps(job_dir: str, skip: Collection[str] = ()) -> list[int]:
    """The global step at the end of every loop whose scalars the chief wrote, oldest file first."""
    steps = []
    for path in sorted(event_files(job_dir) - set(skip)):
        steps += [event.step for event in tf.compat.v1.train.summary_iterator(path)
                  if any(value.tag == "loss" for value in event.summary.value)]
    return steps


def checkpoint_step(job_dir: str) -> int | None:
    """The global step of the chief's latest training checkpoint (`ckpt-<step>`), None before one."""
    latest = tf.train.latest_checkpoint(os.path.join(job_dir, "checkpoints"))
    return int(latest.rsplit("-", 1)[1]) if latest else None


def test_a_chief_and_a_worker_train_both_stages_and_export_a_model_that_serves(data_dir, tmp_path):
    job_dir, scratch = str(tmp_path / "job"), tmp_path / "worker_tmp"
    scratch.mkdir()
    flags = [f"--data_dir={data_dir}", f"--job_dir={job_dir}", *COMMON_FLAGS, "--steps_per_epoch=2",
             "--stage1_epochs=1", "--stage2_epochs=1", "--class_weight=balanced"]

    with started() as trainers:
        chief, worker = start_cluster(trainers, flags, str(tmp_path), "first", str(scratch))
        assert_finished(chief, worker)  # A worker a loop apart would block the other in its next all-reduce.

    run = run_description(job_dir)
    assert (run["workers"], run["replicas"], run["global_batch_size"], run["steps_per_epoch"]) == (2, 2, 4, 2)
    assert logged_steps(job_dir) == [1, 2, 3, 4]  # One step per loop, 2 per epoch...
    assert history(job_dir) == [(1, 1), (2, 2)]  # ...epoch 1 in stage 1, epoch 2 in stage 2.
    assert run["learning_rates"]["stage1"] == pytest.approx(1e-3 * 4 / 32)  # The linear scaling rule.
    # Only the chief wrote checkpoints; the worker's temporary ones are gone.
    assert sorted(os.listdir(os.path.join(job_dir, "checkpoints"))) == [
        "best", "checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index", "ckpt-4.data-00000-of-00001",
        "ckpt-4.index"]
    assert os.listdir(scratch) == []
    with open(os.path.join(job_dir, "eval", "metrics.json")) as handle:
        metrics = json.load(handle)
    assert {split: metrics[split]["num_examples"] for split in ("val", "test")} == {"val": 6, "test": 6}
    assert chief.log().count(report.TEST_HEADING) == 1  # The printed report: test once, apart from val.
    assert report.VAL_HEADING in chief.log()
    assert tf.io.gfile.glob(os.path.join(job_dir, "logs", "train", "events.out.tfevents.*"))

    loaded = model_store.load(job_dir)
    assert loaded.contract.image_size == IMAGE_SIZE
    assert loaded.contract.class_names == contract.CLASS_NAMES
    assert loaded.contract.preprocessing_version == contract.PREPROCESSING_VERSION
    assert loaded.contract.training_config == run
    with open(os.path.join(job_dir, "eval", report.DECISION_RULE_FILE)) as handle:  # Chosen on val.
        assert loaded.contract.decision_rule == decision_rule.DecisionRule.from_json(json.load(handle))
    test_split = input_pipeline.inspect_data(data_dir, IMAGE_SIZE)["test"]
    serialized = [record.numpy() for record in tf.data.TFRecordDataset(test_split.shards, "GZIP").take(5)]
    pngs = [tf.train.Example.FromString(record).features.feature[contract.IMAGE_ENCODED].bytes_list.value[0]
            for record in serialized]
    from_examples = loaded.signatures[contract.SERVING_EXAMPLES_SIGNATURE](
        **{contract.EXAMPLES_INPUT: tf.constant(serialized)})
    from_pngs = loaded.signatures[contract.SERVING_PNG_SIGNATURE](**{contract.PNG_INPUT: tf.constant(pngs)})
    assert from_examples[contract.PROBABILITIES_OUTPUT].shape == (5, contract.NUM_CLASSES)
    np.testing.assert_allclose(from_examples[contract.PROBABILITIES_OUTPUT].numpy().sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(from_pngs[contract.PROBABILITIES_OUTPUT], from_examples[contract.PROBABILITIES_OUTPUT],
                               atol=1e-6)
    with zipfile.ZipFile(os.path.join(job_dir, "model.keras")) as archive:  # Kept for Grad-CAM.
        assert not json.loads(archive.read("config.json"))["compile_config"]
        with archive.open("model.weights.h5") as weights, h5py.File(weights) as stored:
            assert "optimizer" not in stored
    trained = keras.models.load_model(os.path.join(job_dir, "model.keras"))
    direct = trained(features.decode_images(tf.constant(pngs), IMAGE_SIZE), training=False)
    # Served: the temperature fitted on val, then the rule chosen on val (calibration.json, decision_rule.json).
    rule, temperature = loaded.contract.decision_rule, loaded.contract.temperature
    scaled = calibration.apply_temperature(direct.numpy(), temperature)
    np.testing.assert_allclose(rule.adjusted(scaled), from_examples[contract.PROBABILITIES_OUTPUT], atol=1e-5)
    np.testing.assert_array_equal(from_examples[contract.CLASS_ID_OUTPUT], rule.apply(scaled))
    with open(os.path.join(job_dir, "eval", evaluate.CALIBRATION_FILE)) as handle:
        assert json.load(handle)["temperature"] == temperature


def test_a_worker_killed_in_stage_2_resumes_with_the_chief_after_a_relaunch(data_dir, tmp_path):
    job_dir = str(tmp_path / "job")
    flags = [f"--data_dir={data_dir}", f"--job_dir={job_dir}", *COMMON_FLAGS, "--steps_per_epoch=2",
             "--stage1_epochs=1", "--stage2_epochs=2", "--checkpoint_every_loops=1"]

    with started() as trainers:
        chief, worker = start_cluster(trainers, flags, str(tmp_path), "first")
        # Stage 1 has 2 steps: a checkpoint after step 3 is one of stage 2.
        wait_until(lambda: (checkpoint_step(job_dir) or 0) >= 3, "stage-2 checkpoint", [chief, worker])
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait()
        chief.process.send_signal(signal.SIGKILL)  # Stuck in the next all-reduce; Vertex AI restarts every replica.
        chief.process.wait()
        saved_step = checkpoint_step(job_dir)
        first_attempt = event_files(job_dir)

        chief, worker = start_cluster(trainers, flags, str(tmp_path), "relaunch")
        assert_finished(chief, worker)  # The worker resumed at the chief's step, or an all-reduce would hang.

    # Continued from the checkpoint up to 3 epochs × 2 steps.
    assert logged_steps(job_dir, skip=first_attempt) == list(range(saved_step + 1, 7))
    assert history(job_dir) == [(1, 1), (2, 2), (2, 3)]
    assert os.path.exists(os.path.join(job_dir, "export", "saved_model.pb"))


def test_sigterm_checkpoints_and_exits_then_a_restart_resumes(data_dir, tmp_path):
    """One process, 2 CPU replicas, and stage 1 skipped: from random weights one whole-network stage."""
    job_dir = str(tmp_path / "job")
    flags = [f"--data_dir={data_dir}", f"--job_dir={job_dir}", *COMMON_FLAGS, "--steps_per_epoch=3",
             "--stage1_epochs=0", "--stage2_epochs=3", "--cpu_replicas=2"]

    with started() as trainers:
        trainers.append(Trainer("trainer", str(tmp_path / "first.log"), flags))
        first = trainers[-1]
        # Epoch 1 is done and its SIGTERM handler set; SIGTERM lands with 6 steps to go.
        wait_until(lambda: os.path.exists(os.path.join(job_dir, "history.json")), "history.json", [first])
        first.process.send_signal(signal.SIGTERM)
        assert first.wait() == preemption.EXIT_CODE, first.log()[-4000:]
        stopped_step = checkpoint_step(job_dir)
        stopped = checkpoints.TrainingState()
        tf.train.Checkpoint(state=stopped).read(tf.train.latest_checkpoint(
            os.path.join(job_dir, "checkpoints"))).expect_partial()
        assert (int(stopped.stage), int(stopped.step)) == (2, stopped_step)
        assert 3 < stopped_step <= 9
        assert int(stopped.step_in_epoch) > 0  # Saved at the stop: an epoch end's checkpoint has 0 here.
        assert not os.path.exists(os.path.join(job_dir, "export"))
        first_attempt = event_files(job_dir)

        trainers.append(Trainer("restarted", str(tmp_path / "restarted.log"), flags))
        restarted = trainers[-1]
        assert_finished(restarted)

    run = run_description(job_dir)
    assert (run["replicas"], run["workers"]) == (2, 1)
    assert logged_steps(job_dir, skip=first_attempt) == list(range(stopped_step + 1, 10))
    assert history(job_dir) == [(2, 1), (2, 2), (2, 3)]
    assert os.path.exists(os.path.join(job_dir, "export", "saved_model.pb"))


def test_two_deterministic_runs_with_one_seed_end_with_the_same_weights(data_dir, tmp_path):
    """Same data, seed and machine: the same batches in the same order, the same losses, the same model."""
    job_dirs = [str(tmp_path / name) for name in ("first", "second")]
    with started() as trainers:
        for job_dir in job_dirs:
            trainers.append(Trainer(job_dir, f"{job_dir}.log", [
                f"--data_dir={data_dir}", f"--job_dir={job_dir}", *COMMON_FLAGS, "--steps_per_epoch=3",
                "--stage1_epochs=0", "--stage2_epochs=2", "--deterministic"]))
        assert_finished(*trainers)

    assert all(run_description(job_dir)["config"]["deterministic"] for job_dir in job_dirs)
    losses = []
    for job_dir in job_dirs:
        with open(os.path.join(job_dir, "history.json")) as handle:
            losses.append([entry["loss"] for entry in json.load(handle)["epochs"]])
    assert len(losses[0]) == 2 and losses[0] == losses[1]
    weights = [keras.models.load_model(os.path.join(job_dir, "model.keras")).get_weights() for job_dir in job_dirs]
    for first, second in zip(*weights, strict=True):
        np.testing.assert_array_equal(first, second)
