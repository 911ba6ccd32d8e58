"""Entry point: `python -m trainer.task --data_dir=... --job_dir=...`.

The same command trains on a laptop CPU, on one machine with several GPUs and on a
Vertex AI multi-replica job. On Vertex AI, --job_dir defaults to AIP_MODEL_DIR,
checkpoints go to AIP_CHECKPOINT_DIR and TensorBoard logs to AIP_TENSORBOARD_LOG_DIR
when those are set; cloud runs log one line per epoch instead of progress bars.
"""

import os

import tensorflow as tf
from absl import app, flags, logging

from beam_pipelines import contract
from trainer import distribution, input_pipeline, train

CLOUD_ENVIRONMENT = ("CLOUD_ML_JOB_ID", "AIP_MODEL_DIR", "AIP_CHECKPOINT_DIR", "AIP_TENSORBOARD_LOG_DIR")

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Output dir of python -m beam_pipelines.preprocess (local or gs://).")
flags.DEFINE_string("job_dir", os.environ.get("AIP_MODEL_DIR"),
                    "Output dir for the export, model.keras, eval/ and history.json (default: $AIP_MODEL_DIR).")
flags.DEFINE_integer("image_size", contract.DEFAULT_IMAGE_SIZE, "Image side in pixels; must match the records.",
                     lower_bound=contract.MIN_IMAGE_SIZE, upper_bound=contract.MAX_IMAGE_SIZE)
flags.DEFINE_integer("batch_size", 32, "Batch size per replica; the global batch is this × replicas.",
                     lower_bound=1)
flags.DEFINE_integer("stage1_epochs", 2, "Epochs training the head with ResNet50 frozen.", lower_bound=0)
flags.DEFINE_integer("stage2_epochs", 10, "Epochs training the whole network.", lower_bound=0)
flags.DEFINE_float("stage1_learning_rate", 1e-3, "Adam learning rate of stage 1.")
flags.DEFINE_float("stage2_learning_rate", 1e-5, "Adam learning rate of stage 2.")
flags.DEFINE_string("weights", "imagenet",
                    "ResNet50 initial weights: imagenet (downloads), none, or a local/gs:// weights file.")
flags.DEFINE_enum("class_weight", "none", ["none", "balanced"],
                  "balanced weighs the loss by inverse class frequency in the train split.")
flags.DEFINE_bool("mixed_precision", None, "float16 compute, float32 variables (default: on when GPUs are present).")
flags.DEFINE_integer("cpu_replicas", 1,
                     "Without GPUs: split the CPU into N logical devices so MirroredStrategy runs N replicas.",
                     lower_bound=1)
flags.DEFINE_integer("steps_per_epoch", None, "Cap on training steps per epoch, for smoke runs "
                     "(default: one pass over the train split).", lower_bound=1)
flags.DEFINE_integer("seed", 42, "Seed for weights initialisation and input shuffling.")
flags.mark_flag_as_required("data_dir")
for _learning_rate in ("stage1_learning_rate", "stage2_learning_rate"):
    flags.register_validator(_learning_rate, lambda value: value > 0, message="must be positive")
flags.register_validator(
    "weights", lambda value: value.lower() in ("imagenet", "none") or tf.io.gfile.exists(value),
    message="must be imagenet, none, or an existing weights file")


def running_on_cloud() -> bool:
    """True inside a Vertex AI (or AI Platform) training job."""
    return any(variable in os.environ for variable in CLOUD_ENVIRONMENT)


def config_from_flags() -> train.TrainConfig:
    job_dir = FLAGS.job_dir.rstrip("/")
    mixed_precision = FLAGS.mixed_precision
    if mixed_precision is None:
        mixed_precision = bool(tf.config.list_physical_devices("GPU"))
    return train.TrainConfig(
        data_dir=FLAGS.data_dir,
        job_dir=job_dir,
        checkpoint_dir=os.environ.get("AIP_CHECKPOINT_DIR") or os.path.join(job_dir, "checkpoints"),
        tensorboard_dir=os.environ.get("AIP_TENSORBOARD_LOG_DIR") or os.path.join(job_dir, "logs"),
        image_size=FLAGS.image_size,
        batch_size=FLAGS.batch_size,
        stage1_epochs=FLAGS.stage1_epochs,
        stage2_epochs=FLAGS.stage2_epochs,
        stage1_learning_rate=FLAGS.stage1_learning_rate,
        stage2_learning_rate=FLAGS.stage2_learning_rate,
        weights=FLAGS.weights,
        class_weight=FLAGS.class_weight,
        mixed_precision=mixed_precision,
        steps_per_epoch=FLAGS.steps_per_epoch,
        seed=FLAGS.seed,
        verbose=2 if running_on_cloud() else 1,
    )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.job_dir:
        raise app.UsageError("--job_dir is required when AIP_MODEL_DIR is not set")
    strategy = distribution.choose_strategy(FLAGS.cpu_replicas)
    config = config_from_flags()
    logging.info("%s with %d replica(s) in sync; %s", type(strategy).__name__,
                 strategy.num_replicas_in_sync, config)
    try:
        train.run(config, strategy)
    except (input_pipeline.DataError, train.TrainingDivergedError) as error:
        raise SystemExit(f"trainer: {error}") from error


if __name__ == "__main__":
    app.run(main)
