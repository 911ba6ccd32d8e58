"""Real trainer processes: a chief and a worker on loopback ports, a killed worker, a SIGTERM.

Every job is `python -m trainer.task` in subprocesses, as Vertex AI runs it: a cluster
gets TF_CONFIG with free 127.0.0.1 ports and trains under MultiWorkerMirroredStrategy;
the single-process job splits the CPU into 2 replicas (MirroredStrategy). ResNet50
starts from random weights at 32², a few steps per epoch: the tests check the loop, the
checkpoints and the export, not accuracy. Every process started here is killed in a
`finally`, whatever the outcome.
"""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from cxr_core import contract, decision_rule
from serving import features, model_store
from synthetic import records as synthetic_records
from trainer import evaluation, input_pipeline, preemption

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE = 32
PHASE_TIMEOUT = 600
CLOUD_VARIABLES = ("TF_CONFIG", "CLOUD_ML_JOB_ID", "AIP_MODEL_DIR", "AIP_CHECKPOINT_DIR", "AIP_TENSORBOARD_LOG_DIR")
COMMON_FLAGS = (f"--image_size={IMAGE_SIZE}", "--batch_size=2", "--weights=none", "--steps_per_loop=1", "--seed=3")
STEP_LINE = re.compile(r"stage (\d) epoch (\d+) step (\d+) \(\d+/\d+\): loss (\S+) accuracy (\S+)")


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

    def steps(self) -> list[tuple[str, ...]]:
        """(stage, epoch, step, loss, accuracy) of every loop the process logged."""
        return STEP_LINE.findall(self.log())

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


def wait_for_line(trainer: Trainer, pattern: str, others: list[Trainer]) -> re.Match:
    """The first log line of `trainer` matching `pattern`; fails if a process ends first."""
    deadline = time.monotonic() + PHASE_TIMEOUT
    while time.monotonic() < deadline:
        if match := re.search(pattern, trainer.log()):
            return match
        for process in others:
            if process.process.poll() is not None:
                pytest.fail(f"{process.name} ended with {process.process.returncode} before "
                            f"{pattern!r}:\n{process.log()[-4000:]}")
        time.sleep(0.5)
    pytest.fail(f"{trainer.name} never logged {pattern!r}:\n{trainer.log()[-4000:]}")


def assert_finished(*trainers: Trainer) -> None:
    codes = [trainer.wait() for trainer in trainers]
    assert codes == [0] * len(trainers), "\n\n".join(f"{t.name}:\n{t.log()[-4000:]}" for t in trainers)


def history(job_dir: str) -> list[tuple[int, int]]:
    with open(os.path.join(job_dir, "history.json")) as handle:
        return [(entry["stage"], entry["epoch"]) for entry in json.load(handle)["epochs"]]


def steps_after_resume(trainer: Trainer, checkpoint: str) -> list[int]:
    resumed = re.search(rf"resuming from checkpoint {re.escape(checkpoint)}: stage 2 step (\d+)", trainer.log())
    assert resumed, f"{trainer.name} did not resume from {checkpoint}:\n{trainer.log()[-4000:]}"
    return [int(step) for _, _, step, _, _ in trainer.steps()]


def test_a_chief_and_a_worker_train_both_stages_and_export_a_model_that_serves(data_dir, tmp_path):
    job_dir, scratch = str(tmp_path / "job"), tmp_path / "worker_tmp"
    scratch.mkdir()
    flags = [f"--data_dir={data_dir}", f"--job_dir={job_dir}", *COMMON_FLAGS, "--steps_per_epoch=2",
             "--stage1_epochs=1", "--stage2_epochs=1", "--class_weight=balanced"]

    with started() as trainers:
        chief, worker = start_cluster(trainers, flags, str(tmp_path), "first", str(scratch))
        assert_finished(chief, worker)

    assert [step[:3] for step in chief.steps()] == [("1", "1", "1"), ("1", "1", "2"), ("2", "2", "3"),
                                                    ("2", "2", "4")]
    assert chief.steps() == worker.steps()  # Same losses: one model trained by both.
    assert history(job_dir) == [(1, 1), (2, 2)]
    with open(os.path.join(job_dir, "config.json")) as handle:
        run = json.load(handle)
    assert (run["workers"], run["replicas"], run["global_batch_size"]) == (2, 2, 4)
    assert run["learning_rates"]["stage1"] == pytest.approx(1e-3 * 4 / 32)  # The linear scaling rule.
    # Only the chief wrote checkpoints; the worker's temporary ones are gone.
    assert sorted(os.listdir(os.path.join(job_dir, "checkpoints"))) == [
        "best", "checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index", "ckpt-4.data-00000-of-00001",
        "ckpt-4.index"]
    assert os.listdir(scratch) == []
    with open(os.path.join(job_dir, "eval", "metrics.json")) as handle:
        metrics = json.load(handle)
    assert {split: metrics[split]["num_examples"] for split in ("val", "test")} == {"val": 6, "test": 6}
    assert chief.log().count(evaluation.TEST_HEADING) == 1  # The printed report: test once, apart from val.
    assert evaluation.VAL_HEADING in chief.log()
    assert tf.io.gfile.glob(os.path.join(job_dir, "logs", "train", "events.out.tfevents.*"))

    loaded = model_store.load(job_dir)
    assert loaded.contract.image_size == IMAGE_SIZE
    assert loaded.contract.class_names == contract.CLASS_NAMES
    assert loaded.contract.preprocessing_version == contract.PREPROCESSING_VERSION
    assert loaded.contract.training_config == run
    with open(os.path.join(job_dir, "eval", evaluation.DECISION_RULE_FILE)) as handle:  # Chosen on val.
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
    np.testing.assert_array_equal(from_examples[contract.CLASS_ID_OUTPUT],
                                  np.argmax(from_examples[contract.PROBABILITIES_OUTPUT], axis=1))
    np.testing.assert_allclose(from_pngs[contract.PROBABILITIES_OUTPUT], from_examples[contract.PROBABILITIES_OUTPUT],
                               atol=1e-6)
    with zipfile.ZipFile(os.path.join(job_dir, "model.keras")) as archive:  # Kept for Grad-CAM.
        assert not json.loads(archive.read("config.json"))["compile_config"]
        with archive.open("model.weights.h5") as weights, h5py.File(weights) as stored:
            assert "optimizer" not in stored
    trained = keras.models.load_model(os.path.join(job_dir, "model.keras"))
    direct = trained(features.decode_images(tf.constant(pngs), IMAGE_SIZE), training=False)
    np.testing.assert_allclose(loaded.contract.decision_rule.adjusted(direct.numpy()),
                               from_examples[contract.PROBABILITIES_OUTPUT], atol=1e-5)


def test_a_worker_killed_in_stage_2_resumes_with_the_chief_after_a_relaunch(data_dir, tmp_path):
    job_dir = str(tmp_path / "job")
    flags = [f"--data_dir={data_dir}", f"--job_dir={job_dir}", *COMMON_FLAGS, "--steps_per_epoch=2",
             "--stage1_epochs=1", "--stage2_epochs=2", "--checkpoint_every_loops=1"]

    with started() as trainers:
        chief, worker = start_cluster(trainers, flags, str(tmp_path), "first")
        wait_for_line(chief, r"checkpoint at stage 2 step \d+: ", [chief, worker])
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait()
        chief.process.send_signal(signal.SIGKILL)  # Stuck in the next all-reduce; Vertex AI restarts every replica.
        chief.process.wait()
        latest = tf.train.latest_checkpoint(os.path.join(job_dir, "checkpoints"))
        saved_step = int(latest.rsplit("-", 1)[1])
        assert saved_step >= 3  # Stage 1 had 2 steps: the checkpoint is one of stage 2.

        chief, worker = start_cluster(trainers, flags, str(tmp_path), "relaunch")
        assert_finished(chief, worker)

    for trainer in (chief, worker):
        steps = steps_after_resume(trainer, latest)
        assert steps == list(range(saved_step + 1, 7))  # Continued from the checkpoint up to 3 epochs × 2 steps.
    assert history(job_dir) == [(1, 1), (2, 2), (2, 3)]
    assert os.path.exists(os.path.join(job_dir, "export", "saved_model.pb"))


def test_sigterm_checkpoints_and_exits_then_a_restart_resumes(data_dir, tmp_path):
    """One process, 2 CPU replicas, and stage 1 skipped: from random weights one whole-network stage."""
    job_dir = str(tmp_path / "job")
    flags = [f"--data_dir={data_dir}", f"--job_dir={job_dir}", *COMMON_FLAGS, "--steps_per_epoch=3",
             "--stage1_epochs=0", "--stage2_epochs=2", "--cpu_replicas=2"]

    with started() as trainers:
        trainers.append(Trainer("trainer", str(tmp_path / "first.log"), flags))
        first = trainers[-1]
        wait_for_line(first, r"stage 2 epoch 1 step 2 ", [first])
        first.process.send_signal(signal.SIGTERM)
        assert first.wait() == preemption.EXIT_CODE, first.log()[-4000:]
        stopped = re.search(r"stopped by SIGTERM at stage 2 step (\d+) after a checkpoint", first.log())
        assert stopped, first.log()[-4000:]
        latest = tf.train.latest_checkpoint(os.path.join(job_dir, "checkpoints"))
        assert latest.endswith(f"ckpt-{stopped.group(1)}")
        assert not os.path.exists(os.path.join(job_dir, "export"))

        trainers.append(Trainer("restarted", str(tmp_path / "restarted.log"), flags))
        restarted = trainers[-1]
        assert_finished(restarted)

    assert "2 replica(s) in sync on 1 worker(s)" in restarted.log()
    assert steps_after_resume(restarted, latest) == list(range(int(stopped.group(1)) + 1, 7))
    assert history(job_dir) == [(2, 1), (2, 2)]
    assert os.path.exists(os.path.join(job_dir, "export", "saved_model.pb"))
