"""Entry point: `python -m trainer.task --data_dir=... --job_dir=...`.

The same command trains on a laptop CPU, on one machine with several GPUs and on a
Vertex AI multi-replica job. On Vertex AI, --job_dir defaults to AIP_MODEL_DIR,
checkpoints go to AIP_CHECKPOINT_DIR and TensorBoard logs to AIP_TENSORBOARD_LOG_DIR
when those are set. As in tensorflow/models official/, the flags are defined by
`define_flags`, called only when the module runs as a program: importing it registers
nothing and touches no file. Each flag is generated from its field in `trainer.config`,
and the parsed flags are built back into those configs.
"""

import logging as std_logging
import os
from collections.abc import Callable
from typing import Any

import tensorflow as tf
from absl import app, flags, logging

from trainer import config, distribution, input_pipeline, train

TENSORFLOW_DIR = os.path.dirname(tf.__file__) + os.sep
FLAG_CONFIGS = (config.TrainConfig, config.RuntimeConfig)
_DEFINE_BY_TYPE = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float,
                   bool: flags.DEFINE_bool}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Registers a flag (with its validators) in `flag_values` for every setting of `FLAG_CONFIGS`."""
    for config_class in FLAG_CONFIGS:
        for setting in config.settings(config_class):
            _define_flag(setting, flag_values)
    flags.register_multi_flags_validator(
        ["stage1_epochs", "stage2_epochs"], lambda values: values["stage1_epochs"] + values["stage2_epochs"] > 0,
        message="at least one stage needs epochs", flag_values=flag_values)


def _define_flag(setting: config.Setting, flag_values: flags.FlagValues) -> None:
    if setting.choices:
        flags.DEFINE_enum(setting.name, setting.default, list(setting.choices), setting.help, flag_values=flag_values)
    else:
        bounds = {name: bound for name, bound in (("lower_bound", setting.lower_bound),
                                                  ("upper_bound", setting.upper_bound)) if bound is not None}
        _DEFINE_BY_TYPE[setting.value_type](setting.name, setting.default, setting.help, flag_values=flag_values,
                                            **bounds)
    if setting.required:
        flags.mark_flag_as_required(setting.name, flag_values=flag_values)
    if setting.check:
        flags.register_validator(setting.name, _validator(setting.check), flag_values=flag_values)


def _validator(check: config.Check) -> Callable[[Any], bool]:
    """An absl validator that refuses what `check` refuses, with its message; unset (None) flags pass."""

    def validate(value: Any) -> bool:
        if value is not None:
            try:
                check(value)
            except ValueError as error:
                raise flags.ValidationError(str(error)) from error
        return True

    return validate


def config_from_flags(flag_values: flags.FlagValues) -> config.TrainConfig:
    """The run's config from the parsed flags; its output dirs from Vertex AI's environment when it sets them."""
    job_dir = flag_values.job_dir.rstrip("/")
    return _from_flags(config.TrainConfig, flag_values, job_dir=job_dir,
                       checkpoint_dir=os.environ.get("AIP_CHECKPOINT_DIR") or os.path.join(job_dir, "checkpoints"),
                       tensorboard_dir=os.environ.get("AIP_TENSORBOARD_LOG_DIR") or os.path.join(job_dir, "logs"))


def _from_flags(config_class: type, flag_values: flags.FlagValues, **fields: Any) -> Any:
    """`config_class` with every setting's flag value, `fields` set over them."""
    values = {setting.name: flag_values[setting.name].value for setting in config.settings(config_class)}
    return config_class(**(values | fields))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    train_from_flags(flags.FLAGS)


def _quiet_tensorflow_info() -> None:
    """Drops TensorFlow's own INFO lines (SavedModel signatures, fingerprints, checkpoint sharding).

    They bury the run's one line per loop and epoch. Some come through the "tensorflow" logger,
    others straight through absl's, which the trainer's own lines share. Calling it again adds nothing.
    """
    tf.get_logger().setLevel(std_logging.WARNING)
    logging.get_absl_logger().addFilter(_not_tensorflow_info)


def _not_tensorflow_info(record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not record.pathname.startswith(TENSORFLOW_DIR)


def train_from_flags(flag_values: flags.FlagValues) -> None:
    """Chooses the strategy and trains; bad data or a diverging loss end the process with one message."""
    if not flag_values.job_dir:
        raise app.UsageError("--job_dir is required when AIP_MODEL_DIR is not set")
    _quiet_tensorflow_info()
    runtime = _from_flags(config.RuntimeConfig, flag_values)
    strategy = distribution.choose_strategy(runtime.cpu_replicas)
    train_config = config_from_flags(flag_values)
    logging.info("%s with %d replica(s) in sync; %s", type(strategy).__name__,
                 strategy.num_replicas_in_sync, train_config)
    try:
        train.run(train_config, strategy)
    except (input_pipeline.DataError, train.TrainingDivergedError) as error:
        raise SystemExit(f"trainer: {error}") from error


if __name__ == "__main__":
    define_flags()
    app.run(main)
