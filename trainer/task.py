"""Entry point: `python -m trainer.task --data_dir=... --job_dir=...`.

The same command trains on a laptop CPU, on one machine with several GPUs and on a
Vertex AI multi-replica job. On Vertex AI, --job_dir defaults to AIP_MODEL_DIR,
checkpoints go to AIP_CHECKPOINT_DIR and TensorBoard logs to AIP_TENSORBOARD_LOG_DIR
when those are set. As in tensorflow/models official/, the flags are defined by
`define_flags`, called only when the module runs as a program: importing it registers
nothing and touches no file.
"""

import logging as std_logging
import os
import sys
from typing import TypeVar

import tensorflow as tf
from absl import app, flags, logging

from cxr_core import contract, decision_rule
from trainer import distribution, input_pipeline, model, optimization, train

FlagValue = TypeVar("FlagValue")
TENSORFLOW_DIR = os.path.dirname(tf.__file__) + os.sep
CLOUD_ENVIRONMENT = ("CLOUD_ML_JOB_ID", "AIP_MODEL_DIR", "AIP_CHECKPOINT_DIR", "AIP_TENSORBOARD_LOG_DIR")
# --mixed_precision was a boolean flag before it took a precision; its old spellings still work.
LEGACY_MIXED_PRECISION = {"--mixed_precision": "float16", "--nomixed_precision": "none",
                          "--mixed_precision=true": "float16", "--mixed_precision=false": "none"}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Registers the trainer's flags (and their validators) in `flag_values`."""

    values = {"flag_values": flag_values}
    flags.DEFINE_string("data_dir", None, "Output dir of python -m beam_pipelines.preprocess (local or gs://).",
                        **values)
    flags.DEFINE_string("job_dir", os.environ.get("AIP_MODEL_DIR"), "Output dir for the export, model.keras, "
                        "config.json, eval/ and history.json (default: $AIP_MODEL_DIR).", **values)
    flags.DEFINE_integer("image_size", contract.DEFAULT_IMAGE_SIZE, "Image side in pixels; must match the records.",
                         lower_bound=contract.MIN_IMAGE_SIZE, upper_bound=contract.MAX_IMAGE_SIZE, **values)
    flags.DEFINE_integer("batch_size", 32, "Batch size per replica; the global batch is this × replicas.",
                         lower_bound=1, **values)
    flags.DEFINE_integer("stage1_epochs", 2, "Epochs training the head with ResNet50 frozen; 0 skips stage 1.",
                         lower_bound=0, **values)
    flags.DEFINE_integer("stage2_epochs", 10, "Epochs training the whole network; 0 skips stage 2.",
                         lower_bound=0, **values)
    flags.DEFINE_float("stage1_learning_rate", 1e-3,
                       f"Adam learning rate of stage 1 for a global batch of {optimization.REFERENCE_BATCH_SIZE}; "
                       "scaled linearly with the global batch.", **values)
    flags.DEFINE_float("stage2_learning_rate", 1e-5, "Adam learning rate of stage 2, scaled like stage 1's.",
                       **values)
    flags.DEFINE_integer("warmup_steps", 100, "Steps at the start of each stage over which a learning rate raised "
                         "by the global batch ramps up from the flag's value.", lower_bound=0, **values)
    flags.DEFINE_string("weights", "imagenet",
                        "ResNet50 initial weights: imagenet (downloads), none, or a local/gs:// weights file.",
                        **values)
    flags.DEFINE_float("auxiliary_loss_weight", None, "Weight of the loss of a linear classifier on the pooled "
                       "features, trained alongside the head and not exported (default: "
                       f"{model.FROM_SCRATCH_AUXILIARY_LOSS_WEIGHT} with --weights none, else 0). A random ResNet50 "
                       "learns through it while the seed head's ReLU layers would still be silencing themselves; "
                       "see trainer/model.py.", lower_bound=0.0, **values)
    flags.DEFINE_float("head_learning_rate_scale", None, "The seed head's learning rate as a fraction of the "
                       f"stage's (default: {model.FROM_SCRATCH_HEAD_LEARNING_RATE_SCALE} with --weights none, "
                       "else 1).", **values)
    flags.DEFINE_enum("class_weight", "none", ["none", "balanced"],
                      "balanced weighs the loss by inverse class frequency in the train split.", **values)
    flags.DEFINE_string("mixed_precision", None, f"Compute precision: {', '.join(optimization.PRECISIONS)} "
                        "(default: bfloat16 on Ampere or newer GPUs, float16 on older GPUs, none on CPUs). float16 "
                        "adds loss scaling. The old boolean spellings --mixed_precision / --nomixed_precision mean "
                        "float16 / none.", **values)
    flags.DEFINE_bool("jit_compile", None, "Compile each training step with XLA (default: on when GPUs are present).",
                      **values)
    flags.DEFINE_integer("cpu_replicas", 1, "Without GPUs: split the CPU into N logical devices so MirroredStrategy "
                         "runs N replicas.", lower_bound=1, **values)
    flags.DEFINE_integer("steps_per_epoch", None, "Cap on training steps per epoch, for smoke runs "
                         "(default: one pass over the train split).", lower_bound=1, **values)
    flags.DEFINE_integer("steps_per_loop", 50, "Training steps per host call: the host syncs, logs, writes "
                         "TensorBoard scalars and checks the loss and SIGTERM once per loop.", lower_bound=1, **values)
    flags.DEFINE_integer("checkpoint_every_loops", 0,
                         "Also checkpoint every N loops within an epoch (default 0: at epoch ends only).",
                         lower_bound=0, **values)
    flags.DEFINE_integer("keep_checkpoints", 2,
                         "Training checkpoints kept (the best epoch's weights are kept apart).", lower_bound=1,
                         **values)
    flags.DEFINE_enum("cache", "auto", ["auto", "memory", "none"], "Keep decoded images in memory after their "
                      "first pass: memory, none, or auto (when train, then val, fit in --cache_budget_gb).", **values)
    flags.DEFINE_float("cache_budget_gb", 4.0, "Memory --cache auto may fill with decoded uint8 images, per worker.",
                       lower_bound=0.0, **values)
    flags.DEFINE_string("decision_rule", decision_rule.ARGMAX, "How a class is predicted, chosen on val and "
                        "exported with the model: argmax (after correcting the train class mix to val's), or "
                        "target:<class>:<sensitivity|specificity>:<value>, e.g. target:covid19:sensitivity:0.95 "
                        "(a threshold on that class set on val to reach the target there).", **values)
    flags.DEFINE_integer("seed", 42, "Seed for weights initialisation and input shuffling.", **values)
    flags.mark_flag_as_required("data_dir", flag_values=flag_values)
    for learning_rate in ("stage1_learning_rate", "stage2_learning_rate"):
        flags.register_validator(learning_rate, lambda value: value > 0, message="must be positive",
                                 flag_values=flag_values)
    flags.register_validator("head_learning_rate_scale", lambda value: value is None or value > 0,
                             message="must be positive", flag_values=flag_values)
    flags.register_validator(
        "weights", lambda value: value.lower() in ("imagenet", "none") or tf.io.gfile.exists(value),
        message="must be imagenet, none, or an existing weights file", flag_values=flag_values)
    flags.register_validator(
        "mixed_precision", lambda value: value is None or value in optimization.PRECISIONS,
        message=f"must be one of {', '.join(optimization.PRECISIONS)}", flag_values=flag_values)
    flags.register_validator("decision_rule", _check_decision_rule_syntax, flag_values=flag_values)
    flags.register_multi_flags_validator(
        ["stage1_epochs", "stage2_epochs"], lambda values: values["stage1_epochs"] + values["stage2_epochs"] > 0,
        message="at least one stage needs epochs", flag_values=flag_values)


def _check_decision_rule_syntax(text: str) -> bool:
    try:
        decision_rule.parse_decision_rule(text)
    except ValueError as error:
        raise flags.ValidationError(str(error)) from error
    return True


def translate_legacy_arguments(argv: list[str]) -> list[str]:
    """Rewrites the boolean spellings of --mixed_precision into precisions."""
    translated = []
    for index, argument in enumerate(argv):
        followed_by_value = index + 1 < len(argv) and not argv[index + 1].startswith("-")
        if argument.lower() in LEGACY_MIXED_PRECISION and not (argument == "--mixed_precision" and followed_by_value):
            replacement = f"--mixed_precision={LEGACY_MIXED_PRECISION[argument.lower()]}"
            logging.warning("%s is deprecated; use %s", argument, replacement)
            argument = replacement
        translated.append(argument)
    return translated


def config_from_flags(flag_values: flags.FlagValues) -> train.TrainConfig:
    job_dir = flag_values.job_dir.rstrip("/")
    gpus = bool(tf.config.list_physical_devices("GPU"))
    from_scratch = model.is_from_scratch(flag_values.weights)
    return train.TrainConfig(
        data_dir=flag_values.data_dir,
        job_dir=job_dir,
        checkpoint_dir=os.environ.get("AIP_CHECKPOINT_DIR") or os.path.join(job_dir, "checkpoints"),
        tensorboard_dir=os.environ.get("AIP_TENSORBOARD_LOG_DIR") or os.path.join(job_dir, "logs"),
        image_size=flag_values.image_size,
        batch_size=flag_values.batch_size,
        stage1_epochs=flag_values.stage1_epochs,
        stage2_epochs=flag_values.stage2_epochs,
        stage1_learning_rate=flag_values.stage1_learning_rate,
        stage2_learning_rate=flag_values.stage2_learning_rate,
        warmup_steps=flag_values.warmup_steps,
        weights=flag_values.weights,
        auxiliary_loss_weight=_default(flag_values.auxiliary_loss_weight,
                                       model.FROM_SCRATCH_AUXILIARY_LOSS_WEIGHT if from_scratch else 0.0),
        head_learning_rate_scale=_default(flag_values.head_learning_rate_scale,
                                          model.FROM_SCRATCH_HEAD_LEARNING_RATE_SCALE if from_scratch else 1.0),
        class_weight=flag_values.class_weight,
        mixed_precision=flag_values.mixed_precision or optimization.default_precision(),
        jit_compile=_default(flag_values.jit_compile, gpus),
        steps_per_epoch=flag_values.steps_per_epoch,
        steps_per_loop=flag_values.steps_per_loop,
        checkpoint_every_loops=flag_values.checkpoint_every_loops,
        keep_checkpoints=flag_values.keep_checkpoints,
        cache=flag_values.cache,
        cache_budget_gb=flag_values.cache_budget_gb,
        decision_rule=flag_values.decision_rule,
        seed=flag_values.seed,
    )


def _default(value: FlagValue | None, default: FlagValue) -> FlagValue:
    """A flag's value, or `default` when the flag was left unset (None)."""
    return default if value is None else value


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
    strategy = distribution.choose_strategy(flag_values.cpu_replicas)
    config = config_from_flags(flag_values)
    logging.info("%s with %d replica(s) in sync; %s", type(strategy).__name__,
                 strategy.num_replicas_in_sync, config)
    try:
        train.run(config, strategy)
    except (input_pipeline.DataError, train.TrainingDivergedError) as error:
        raise SystemExit(f"trainer: {error}") from error


if __name__ == "__main__":
    define_flags()
    app.run(main, argv=translate_legacy_arguments(sys.argv))
