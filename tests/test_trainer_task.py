"""`python -m trainer.task` flags and the Vertex AI environment they default from.

Each test defines the flags into a fresh FlagValues, as `python -m trainer.task` does
into the global one: importing `trainer.task` registers nothing.
"""

import glob
import logging as std_logging
import os
import subprocess
import sys

import pytest
import tensorflow as tf
from absl import flags
from absl import logging as absl_logging

from cxr_core import contract
from synthetic import records as synthetic_records
from trainer import config, model, task, train

CLOUD_ENVIRONMENT = ("CLOUD_ML_JOB_ID", "AIP_MODEL_DIR", "AIP_CHECKPOINT_DIR", "AIP_TENSORBOARD_LOG_DIR")


def parse(*arguments: str) -> flags.FlagValues:
    flag_values = flags.FlagValues()
    task.define_flags(flag_values)
    flag_values(["trainer.task", *arguments])
    return flag_values


@pytest.fixture
def local(monkeypatch):
    for variable in CLOUD_ENVIRONMENT:
        monkeypatch.delenv(variable, raising=False)


def test_importing_the_task_registers_no_flags():
    probe = ("from absl import flags; import trainer.task; own = flags.FlagValues(); "
             "trainer.task.define_flags(own); print(sorted(set(own) & set(flags.FLAGS)))")
    added = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert added.strip() == "[]"


def test_local_run_writes_everything_under_job_dir(local):
    flag_values = parse("--data_dir=gs://bucket/records", "--job_dir=gs://bucket/job/", "--batch_size=8",
                        "--weights=none", "--class_weight=balanced", "--steps_per_epoch=5",
                        "--mixed_precision=bfloat16", "--nojit_compile", "--steps_per_loop=7",
                        "--checkpoint_every_loops=3", "--keep_checkpoints=4", "--cache=none", "--warmup_steps=0")

    config = task.config_from_flags(flag_values)

    assert config.job_dir == "gs://bucket/job"
    assert config.checkpoint_dir == "gs://bucket/job/checkpoints"
    assert config.tensorboard_dir == "gs://bucket/job/logs"
    assert (config.batch_size, config.weights, config.class_weight) == (8, "none", "balanced")
    assert config.steps_per_epoch == 5
    assert (config.mixed_precision, config.jit_compile) == ("bfloat16", False)
    assert (config.steps_per_loop, config.checkpoint_every_loops, config.keep_checkpoints) == (7, 3, 4)
    assert (config.cache, config.warmup_steps) == ("none", 0)


def test_defaults_without_a_gpu(local):
    config = task.config_from_flags(parse("--data_dir=records", "--job_dir=job"))

    assert (config.image_size, config.batch_size, config.stage1_epochs, config.stage2_epochs) == (128, 32, 2, 10)
    assert (config.weights, config.cache, config.cache_budget_gb) == ("imagenet", "auto", 4.0)
    assert (config.steps_per_loop, config.checkpoint_every_loops, config.keep_checkpoints) == (50, 0, 2)
    assert (config.mixed_precision, config.jit_compile) == ("none", False)  # This machine has no GPU.


@pytest.mark.parametrize("weights, auxiliary, head_scale", [
    ("none", model.FROM_SCRATCH_AUXILIARY_LOSS_WEIGHT, model.FROM_SCRATCH_HEAD_LEARNING_RATE_SCALE),
    ("imagenet", 0.0, 1.0),
])
def test_a_random_base_gets_the_auxiliary_loss_and_a_slower_head_by_default(weights, auxiliary, head_scale, local):
    config = task.config_from_flags(parse("--data_dir=records", "--job_dir=job", f"--weights={weights}"))

    assert (config.auxiliary_loss_weight, config.head_learning_rate_scale) == (auxiliary, head_scale)


def test_explicit_auxiliary_and_head_settings_override_the_defaults(local):
    config = task.config_from_flags(parse("--data_dir=records", "--job_dir=job", "--weights=none",
                                          "--auxiliary_loss_weight=0", "--head_learning_rate_scale=1"))

    assert (config.auxiliary_loss_weight, config.head_learning_rate_scale) == (0.0, 1.0)


def test_tensorflow_info_lines_are_dropped_and_the_trainers_kept():
    task._quiet_tensorflow_info()
    absl_logger = absl_logging.get_absl_logger()

    def passes(level: int, pathname: str) -> bool:
        return bool(absl_logger.filter(absl_logger.makeRecord("absl", level, pathname, 1, "message", (), None)))

    saver = os.path.join(task.TENSORFLOW_DIR, "python", "checkpoint", "functional_saver.py")
    assert not passes(std_logging.INFO, saver)
    assert passes(std_logging.WARNING, saver)
    assert passes(std_logging.INFO, train.__file__)


def test_vertex_ai_directories(monkeypatch):
    monkeypatch.setenv("CLOUD_ML_JOB_ID", "123")
    monkeypatch.setenv("AIP_CHECKPOINT_DIR", "gs://bucket/checkpoints")
    monkeypatch.setenv("AIP_TENSORBOARD_LOG_DIR", "gs://bucket/tensorboard")

    config = task.config_from_flags(parse("--data_dir=gs://bucket/records", "--job_dir=gs://bucket/model"))

    assert config.checkpoint_dir == "gs://bucket/checkpoints"
    assert config.tensorboard_dir == "gs://bucket/tensorboard"


def test_every_flag_reaches_its_config_field(local):
    """Each setting of TrainConfig is a flag whose value lands in the field of the same name."""
    values = {"data_dir": "gs://bucket/records", "job_dir": "gs://bucket/job", "image_size": 64, "batch_size": 8,
              "stage1_epochs": 3, "stage2_epochs": 4, "stage1_learning_rate": 2e-3, "stage2_learning_rate": 3e-4,
              "warmup_steps": 7, "learning_rate_decay": "cosine", "weights": "none", "auxiliary_loss_weight": 0.5,
              "head_learning_rate_scale": 0.25, "class_weight": "balanced", "mixed_precision": "float16",
              "jit_compile": True, "steps_per_epoch": 9, "steps_per_loop": 5, "checkpoint_every_loops": 2,
              "keep_checkpoints": 3, "cache": "memory",
              "cache_budget_gb": 1.5, "decision_rule": "target:covid19:specificity:0.9",
              "min_sensitivity": "pneumonia=0.8", "test_time_zooms": "0.9,1.1", "seed": 7, "deterministic": True}
    defaults = {setting.name: setting.default for setting in config.settings(config.TrainConfig)}
    assert set(values) == set(defaults)
    assert all(values[name] != defaults[name] for name in values)  # Else a flag ignored would go unnoticed.

    built = task.config_from_flags(parse(*(f"--{name}={value}" for name, value in values.items())))

    assert {name: getattr(built, name) for name in values} == values


def test_runtime_settings_are_flags_too():
    assert [setting.name for setting in config.settings(config.RuntimeConfig)] == ["cpu_replicas"]
    assert parse("--data_dir=records", "--cpu_replicas=3").cpu_replicas == 3


def test_a_config_built_in_code_fills_in_the_automatic_settings():
    paths = {"data_dir": "records", "job_dir": "job", "checkpoint_dir": "job/checkpoints", "tensorboard_dir": "job/logs"}

    from_scratch = config.TrainConfig(**paths, weights="none")
    explicit = config.TrainConfig(**paths, weights="none", auxiliary_loss_weight=0.0, jit_compile=True)

    assert (from_scratch.auxiliary_loss_weight, from_scratch.head_learning_rate_scale) == (
        model.FROM_SCRATCH_AUXILIARY_LOSS_WEIGHT, model.FROM_SCRATCH_HEAD_LEARNING_RATE_SCALE)
    assert (from_scratch.mixed_precision, from_scratch.jit_compile) == ("none", False)  # This machine has no GPU.
    assert (explicit.auxiliary_loss_weight, explicit.jit_compile) == (0.0, True)


@pytest.mark.parametrize("argument", ["--class_weight=inverse", "--image_size=16", "--batch_size=0",
                                      "--stage2_learning_rate=0", "--cpu_replicas=0", "--stage1_epochs=-1",
                                      "--weights=/no/such/weights.h5", "--mixed_precision=float8",
                                      "--mixed_precision=true",
                                      "--steps_per_loop=0", "--keep_checkpoints=0", "--cache=disk",
                                      "--auxiliary_loss_weight=-1", "--head_learning_rate_scale=0",
                                      "--decision_rule=target:covid19:recall:0.95", "--min_sensitivity=covid=0.9"])
def test_invalid_flag_values_are_refused(argument):
    with pytest.raises(flags.IllegalFlagValueError):
        parse("--data_dir=records", "--job_dir=job", argument)


def test_decision_rule_defaults_to_a_covid19_sensitivity_target_and_takes_argmax(local):
    default = task.config_from_flags(parse("--data_dir=records", "--job_dir=job")).decision_rule
    assert default == "target:covid19:sensitivity:0.95"
    config = task.config_from_flags(parse("--data_dir=records", "--job_dir=job", "--decision_rule=argmax"))
    assert config.decision_rule == "argmax"


def test_a_malformed_decision_rule_is_refused_with_its_usage():
    with pytest.raises(flags.IllegalFlagValueError,
                       match=r"--decision_rule must be argmax or target:<class>:<sensitivity\|specificity>"):
        parse("--data_dir=records", "--job_dir=job", "--decision_rule=target:flu:sensitivity:0.95")


def test_a_decision_rule_val_cannot_set_ends_the_job_before_a_model_is_built(tmp_path, local):
    data_dir = synthetic_records.write_dataset(str(tmp_path / "records"), 32, {"train": 2, "val": 2, "test": 1})
    (val_shard,) = glob.glob(f"{data_dir}/{contract.shard_pattern('val')}")
    without_covid19 = [record for record in tf.data.TFRecordDataset(val_shard, "GZIP").as_numpy_iterator()
                       if tf.train.Example.FromString(record).features.feature[contract.LABEL].int64_list.value[0]
                       != contract.CLASS_IDS["covid19"]]
    with tf.io.TFRecordWriter(val_shard, options=contract.TFRECORD_COMPRESSION) as writer:
        for record in without_covid19:
            writer.write(record)
    flag_values = parse(f"--data_dir={data_dir}", f"--job_dir={tmp_path / 'job'}", "--weights=none",
                        "--image_size=32", "--batch_size=2", "--decision_rule=target:covid19:sensitivity:0.95")

    with pytest.raises(SystemExit, match=r"^trainer: --decision_rule target:covid19:sensitivity:0.95: "
                                         "val has no covid19 examples to set the threshold on"):
        task.train_from_flags(flag_values)
    assert not (tmp_path / "job").exists()


def test_a_run_needs_epochs_in_some_stage():
    with pytest.raises(flags.IllegalFlagValueError, match="at least one stage needs epochs"):
        parse("--data_dir=records", "--job_dir=job", "--stage1_epochs=0", "--stage2_epochs=0")


def test_data_dir_is_required():
    with pytest.raises(flags.IllegalFlagValueError, match="data_dir"):
        parse("--job_dir=job")


def test_bad_data_ends_the_job_with_the_message_not_a_stack_trace(tmp_path, local):
    flag_values = parse(f"--data_dir={tmp_path / 'missing'}", f"--job_dir={tmp_path / 'job'}", "--weights=none")

    with pytest.raises(SystemExit, match=f"^trainer: data dir {tmp_path / 'missing'} does not exist"):
        task.train_from_flags(flag_values)
    assert not (tmp_path / "job").exists()
