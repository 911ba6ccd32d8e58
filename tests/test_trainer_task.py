"""`python -m trainer.task` flags and the Vertex AI environment they default from."""

import pytest
from absl import flags
from absl.testing import flagsaver

from trainer import task

FLAGS = flags.FLAGS


def parse(*arguments: str) -> None:
    FLAGS.unparse_flags()
    FLAGS(["trainer.task", *arguments])


@pytest.fixture(autouse=True)
def restore_flags():
    with flagsaver.flagsaver():
        yield
    FLAGS.unparse_flags()


def test_local_run_writes_everything_under_job_dir(monkeypatch):
    for variable in task.CLOUD_ENVIRONMENT:
        monkeypatch.delenv(variable, raising=False)
    parse("--data_dir=gs://bucket/records", "--job_dir=gs://bucket/job/", "--batch_size=8",
          "--weights=none", "--class_weight=balanced", "--steps_per_epoch=5", "--nomixed_precision")

    config = task.config_from_flags()

    assert config.job_dir == "gs://bucket/job"
    assert config.checkpoint_dir == "gs://bucket/job/checkpoints"
    assert config.tensorboard_dir == "gs://bucket/job/logs"
    assert (config.batch_size, config.weights, config.class_weight, config.steps_per_epoch) == (8, "none", "balanced", 5)
    assert config.mixed_precision is False
    assert config.verbose == 1  # Progress bars.


def test_vertex_ai_directories_and_one_line_per_epoch(monkeypatch):
    monkeypatch.setenv("CLOUD_ML_JOB_ID", "123")
    monkeypatch.setenv("AIP_CHECKPOINT_DIR", "gs://bucket/checkpoints")
    monkeypatch.setenv("AIP_TENSORBOARD_LOG_DIR", "gs://bucket/tensorboard")
    parse("--data_dir=gs://bucket/records", "--job_dir=gs://bucket/model")

    config = task.config_from_flags()

    assert config.checkpoint_dir == "gs://bucket/checkpoints"
    assert config.tensorboard_dir == "gs://bucket/tensorboard"
    assert config.verbose == 2
    assert (config.image_size, config.batch_size, config.stage1_epochs, config.stage2_epochs) == (128, 32, 2, 10)
    assert config.weights == "imagenet"


@pytest.mark.parametrize("argument", ["--class_weight=inverse", "--image_size=16", "--batch_size=0",
                                      "--stage2_learning_rate=0", "--cpu_replicas=0", "--stage1_epochs=-1",
                                      "--weights=/no/such/weights.h5"])
def test_invalid_flag_values_are_refused(argument):
    with pytest.raises(flags.IllegalFlagValueError):
        parse("--data_dir=records", "--job_dir=job", argument)


def test_data_dir_is_required():
    with pytest.raises(flags.IllegalFlagValueError, match="data_dir"):
        parse("--job_dir=job")


def test_bad_data_ends_the_job_with_the_message_not_a_stack_trace(tmp_path, monkeypatch):
    for variable in task.CLOUD_ENVIRONMENT:
        monkeypatch.delenv(variable, raising=False)
    parse(f"--data_dir={tmp_path / 'missing'}", f"--job_dir={tmp_path / 'job'}", "--weights=none")

    with pytest.raises(SystemExit, match=f"^trainer: data dir {tmp_path / 'missing'} does not exist"):
        task.main(["trainer.task"])
