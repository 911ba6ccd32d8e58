"""Training in-process: a diverging loss stops the run before anything is saved.

Whole runs (several workers, resumes, the export) are in test_trainer_distributed.py,
as subprocesses. ResNet50 starts from random weights (`none`): nothing is downloaded.
"""

import json
import os
import uuid

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from cxr_core import contract, imaging
from serving import model_store
from synthetic import records as synthetic_records
from trainer import config, distribution, model, task, train

IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return synthetic_records.write_dataset(
        str(tmp_path_factory.mktemp("records")), IMAGE_SIZE, {"train": 4, "val": 2, "test": 2}, {"train": 2})


def test_a_diverging_loss_stops_the_run_at_the_loop_boundary_with_a_clear_error(data_dir, tmp_path):
    """A NaN learning rate makes the weights, then the loss, NaN after the first step."""
    job_dir = str(tmp_path / "job")
    run_config = config.TrainConfig(
        data_dir=data_dir, job_dir=job_dir, checkpoint_dir=f"{job_dir}/checkpoints",
        tensorboard_dir=f"{job_dir}/logs", image_size=IMAGE_SIZE, batch_size=4, stage1_epochs=2,
        stage2_epochs=1, stage1_learning_rate=float("nan"), steps_per_epoch=3, steps_per_loop=2, weights="none")

    with pytest.raises(train.TrainingDivergedError,
                       match=r"stage 1: the training loss became nan by step 2 \(epoch 1\) and training stopped"):
        train.run(run_config, distribution.choose_strategy(cpu_replicas=1))
    assert not os.path.exists(f"{job_dir}/checkpoints")
    assert not os.path.exists(f"{job_dir}/export")
    assert os.path.exists(f"{job_dir}/config.json")  # Written first, as the record of what was tried.


def test_every_trainer_output_goes_through_tensorflows_filesystem_api(data_dir):
    """A job dir on TensorFlow's in-memory filesystem (ram://) receives every output, and the model
    serves from there: the trainer reaches gs:// the same way, through tf.io.gfile, which a local
    storage emulator cannot stand in for (docs/cloud.md)."""
    job_dir = f"ram://job-{uuid.uuid4().hex}"
    values = flags.FlagValues()
    task.define_flags(values)
    values(["trainer", f"--data_dir={data_dir}", f"--job_dir={job_dir}", f"--image_size={IMAGE_SIZE}",
            "--batch_size=4", "--stage1_epochs=0", "--stage2_epochs=1", "--steps_per_epoch=2", "--steps_per_loop=2",
            "--weights=none", "--test_time_zooms=0.95,1.05"])

    task.train_from_flags(values)

    assert {"checkpoints", "config.json", "eval", "export", "history.json", "logs", "model.keras"} <= set(
        tf.io.gfile.listdir(job_dir))
    assert tf.io.gfile.exists(f"{job_dir}/eval/metrics.json")
    with tf.io.gfile.GFile(f"{job_dir}/config.json") as handle:
        run = json.load(handle)
    assert set(run) == {"config", "strategy", "replicas", "workers", "global_batch_size", "steps_per_epoch",
                        "learning_rates", "class_names", "preprocessing_version", "tensorflow_version"}
    assert list(run["config"]) == [
        "data_dir", "job_dir", "checkpoint_dir", "tensorboard_dir", "image_size", "batch_size", "stage1_epochs",
        "stage2_epochs", "stage1_learning_rate", "stage2_learning_rate", "warmup_steps", "learning_rate_decay",
        "weights", "auxiliary_loss_weight", "head_learning_rate_scale", "class_weight", "mixed_precision",
        "jit_compile", "steps_per_epoch", "steps_per_loop", "checkpoint_every_loops", "keep_checkpoints", "cache",
        "cache_budget_gb", "decision_rule", "min_sensitivity", "test_time_zooms", "seed", "deterministic"]
    assert (run["config"]["job_dir"], run["config"]["auxiliary_loss_weight"]) == (
        job_dir, model.FROM_SCRATCH_AUXILIARY_LOSS_WEIGHT)  # The value the run used, not the flag's None.
    served = model_store.load(job_dir)
    assert (served.contract.image_size, served.contract.test_time_zooms) == (IMAGE_SIZE, (0.95, 1.05))
    blank = imaging.encode_png(np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8))
    outputs = served.signatures[contract.SERVING_PNG_SIGNATURE](**{contract.PNG_INPUT: tf.constant([blank])})
    assert outputs[contract.PROBABILITIES_OUTPUT].shape == (1, contract.NUM_CLASSES)
