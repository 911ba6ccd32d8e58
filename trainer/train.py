"""Two-stage training under a tf.distribute strategy, resumable, then evaluation and export.

Stage 1 trains the head with ResNet50 frozen; stage 2 trains the whole network at a
lower learning rate (the seed project's recipe). Epochs are numbered across stages
(stage 2 starts at epoch stage1_epochs + 1), so TensorBoard, history.json and the
per-epoch checkpoints read as one run.

Fault tolerance: each stage's fit() runs with a BackupAndRestore backup of the last
finished epoch (weights, optimizer state, epoch number), and a finished stage leaves
its weights in `stage<N>.weights.h5`. A job started again with the same flags skips
the finished stages and resumes the running one after its last saved epoch.
"""

import dataclasses
import json
import math
import os
from collections.abc import Sequence

import keras
import tensorflow as tf
from absl import logging

from beam_pipelines import contract
from serving import export
from trainer import distribution, evaluation, input_pipeline
from trainer import model as model_lib


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one run needs; `trainer.task` fills it from flags and Vertex AI's environment."""

    data_dir: str
    job_dir: str
    checkpoint_dir: str
    tensorboard_dir: str
    image_size: int = contract.DEFAULT_IMAGE_SIZE
    batch_size: int = 32  # Per replica.
    stage1_epochs: int = 2
    stage2_epochs: int = 10
    stage1_learning_rate: float = 1e-3
    stage2_learning_rate: float = 1e-5
    weights: str = "imagenet"
    class_weight: str = "none"
    mixed_precision: bool = False
    steps_per_epoch: int | None = None
    seed: int = 42
    verbose: int = 1  # Keras fit(): 1 progress bars, 2 one line per epoch.


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; training stopped instead of saving garbage."""


@dataclasses.dataclass(frozen=True)
class OutputPaths:
    """Where a run writes; only the chief writes anything but its own backups."""

    job_dir: str
    checkpoint_dir: str
    tensorboard_dir: str
    task: str

    @property
    def history_file(self) -> str:
        return os.path.join(self.job_dir, "history.json")

    @property
    def eval_dir(self) -> str:
        return os.path.join(self.job_dir, "eval")

    @property
    def export_dir(self) -> str:
        return os.path.join(self.job_dir, "export")

    @property
    def keras_file(self) -> str:
        return os.path.join(self.job_dir, "model.keras")

    @property
    def epoch_checkpoint(self) -> str:
        """A ModelCheckpoint file pattern (Keras fills in the 1-based epoch)."""
        return os.path.join(self.checkpoint_dir, "epoch-{epoch:03d}.weights.h5")

    def stage_weights(self, stage: int) -> str:
        return os.path.join(self.checkpoint_dir, f"stage{stage}.weights.h5")

    def backup_dir(self, stage: int) -> str:
        """Per task and stage: every worker restores the same epoch from its own backup."""
        return os.path.join(self.checkpoint_dir, "backup", self.task, f"stage{stage}")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One fit() call: which layers train (`model.set_stage`), for how long, how fast."""

    number: int
    epochs: int
    learning_rate: float
    pretrained: bool  # The base started from trained weights: its BatchNormalization stays frozen.


@dataclasses.dataclass(frozen=True)
class FitInputs:
    """What every stage's fit() reads."""

    train_data: tf.data.Dataset
    steps_per_epoch: int
    val_data: tf.data.Dataset | None
    validation_steps: int | None
    class_weight: dict[int, float] | None
    verbose: int


class EpochHistory(keras.callbacks.Callback):
    """Keeps history.json current after every epoch, across stages and restarts.

    A resumed run appends to the file it finds; an epoch run again after a crash
    replaces its earlier entry.
    """

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.stage = 0
        self.epochs: list[dict] = []
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path) as existing:
                self.epochs = json.load(existing)["epochs"]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        entry = {"stage": self.stage, "epoch": epoch + 1}
        entry.update({name: float(value) for name, value in (logs or {}).items()})
        self.epochs = sorted([e for e in self.epochs if e["epoch"] != entry["epoch"]] + [entry],
                             key=lambda e: e["epoch"])
        # Written aside and renamed, so a job killed mid-write leaves the previous file intact.
        tf.io.gfile.makedirs(os.path.dirname(self.path))
        with tf.io.gfile.GFile(f"{self.path}.partial", "w") as output:
            json.dump({"epochs": self.epochs}, output, indent=2)
        tf.io.gfile.rename(f"{self.path}.partial", self.path, overwrite=True)


class StageBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore for one of several fit() calls on the same model.

    Keras stores the epoch it restored on the model (`_initial_epoch`) and applies it
    to every later fit(); clearing it when the stage ends lets the next stage start
    at its own first epoch.
    """

    def on_train_end(self, logs: dict | None = None) -> None:
        super().on_train_end(logs)
        self.model._initial_epoch = None


def class_weights(mode: str, class_counts: Sequence[int]) -> dict[int, float] | None:
    """`balanced` weighs each class by total / (classes × its count); `none` gives None."""
    if mode == "none":
        return None
    if mode == "balanced":
        total = sum(class_counts)
        return {index: total / (len(class_counts) * count) for index, count in enumerate(class_counts)}
    raise ValueError(f"class_weight must be none or balanced, got {mode!r}")


def run(config: TrainConfig, strategy: tf.distribute.Strategy,
        extra_callbacks: Sequence[keras.callbacks.Callback] = ()) -> dict[str, dict]:
    """Checks the data, trains both stages, then (on the chief) evaluates and exports.

    Returns the val and test metrics on the chief, {} on other workers.

    Raises:
      input_pipeline.DataError: the data dir cannot feed training (before any training).
      TrainingDivergedError: the loss became NaN or infinite.
    """
    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_global_policy("mixed_float16" if config.mixed_precision else "float32")
    data = input_pipeline.inspect_data(config.data_dir, config.image_size)
    for split in data.values():
        logging.info("%s: %d examples %s in %d shard(s)", split.name, split.num_examples,
                     dict(zip(contract.CLASS_NAMES, split.class_counts)), len(split.shards))
    global_batch_size = config.batch_size * strategy.num_replicas_in_sync
    inputs = _fit_inputs(config, data, global_batch_size, distribution.worker_count(strategy))
    logging.info("%d replica(s) in sync, global batch %d, %d steps per epoch, class weights %s",
                 strategy.num_replicas_in_sync, global_batch_size, inputs.steps_per_epoch, inputs.class_weight)
    initial_weights = model_lib.resolve_weights(config.weights)
    with strategy.scope():
        model = model_lib.build_model(config.image_size, initial_weights)

    chief = distribution.is_chief(strategy)
    paths = OutputPaths(config.job_dir, config.checkpoint_dir, config.tensorboard_dir,
                        distribution.task_name(strategy))
    pretrained = initial_weights is not None
    stages = (Stage(1, config.stage1_epochs, config.stage1_learning_rate, pretrained),
              Stage(2, config.stage2_epochs, config.stage2_learning_rate, pretrained))
    _train_stages(model, strategy, stages, inputs, paths, chief, extra_callbacks)
    if not chief:
        return {}
    return _evaluate_and_export(model, data, config.image_size, global_batch_size, paths)


def _fit_inputs(config: TrainConfig, data: dict[str, input_pipeline.SplitData], global_batch_size: int,
                workers: int) -> FitInputs:
    train, val = data["train"], data["val"]
    full_batches = train.num_examples // global_batch_size
    if not full_batches:
        raise input_pipeline.DataError(
            f"the train split has {train.num_examples} examples, fewer than one global batch of "
            f"{global_batch_size} (--batch_size per replica × replicas); lower --batch_size")
    # Per-epoch validation reads whole global batches (see input_pipeline.validation_dataset);
    # the final evaluation reads every original.
    validation_steps = val.num_examples // global_batch_size
    if not validation_steps:
        logging.warning("val has %d originals, fewer than one global batch of %d: no per-epoch validation",
                        val.num_examples, global_batch_size)
    return FitInputs(
        train_data=input_pipeline.train_dataset(train, config.image_size, global_batch_size, workers, config.seed),
        steps_per_epoch=min(full_batches, config.steps_per_epoch or full_batches),
        val_data=input_pipeline.validation_dataset(val, config.image_size, global_batch_size, workers)
        if validation_steps else None,
        validation_steps=validation_steps or None,
        class_weight=class_weights(config.class_weight, train.class_counts),
        verbose=config.verbose,
    )


def _train_stages(model: keras.Model, strategy: tf.distribute.Strategy, stages: Sequence[Stage],
                  inputs: FitInputs, paths: OutputPaths, chief: bool,
                  extra_callbacks: Sequence[keras.callbacks.Callback]) -> None:
    """Runs the unfinished stages; leaves the model with the last stage's weights."""
    history = EpochHistory(paths.history_file)
    first_epoch, finished_weights = 0, None
    for stage in stages:
        if tf.io.gfile.exists(paths.stage_weights(stage.number)):
            logging.info("stage %d already finished: %s", stage.number, paths.stage_weights(stage.number))
            finished_weights = paths.stage_weights(stage.number)
        elif stage.epochs:
            if finished_weights:
                model.load_weights(finished_weights)
                finished_weights = None
            history.stage = stage.number
            _fit_stage(model, strategy, stage, first_epoch, inputs,
                       _callbacks(stage, paths, chief, history, extra_callbacks))
            if chief:
                _save_weights_atomically(model, paths.stage_weights(stage.number))
        first_epoch += stage.epochs
    if finished_weights:
        model.load_weights(finished_weights)


def _callbacks(stage: Stage, paths: OutputPaths, chief: bool, history: EpochHistory,
               extra_callbacks: Sequence[keras.callbacks.Callback]) -> list[keras.callbacks.Callback]:
    """NaN guard first; the backup last, so it saves only once the epoch is fully logged."""
    callbacks = [keras.callbacks.TerminateOnNaN()]
    if chief:
        callbacks += [
            history,
            keras.callbacks.ModelCheckpoint(paths.epoch_checkpoint, save_weights_only=True),
            keras.callbacks.TensorBoard(paths.tensorboard_dir, write_graph=False, profile_batch=0),
        ]
    callbacks.append(StageBackupAndRestore(paths.backup_dir(stage.number)))
    return callbacks + list(extra_callbacks)


def _fit_stage(model: keras.Model, strategy: tf.distribute.Strategy, stage: Stage, first_epoch: int,
               inputs: FitInputs, callbacks: list[keras.callbacks.Callback]) -> None:
    with strategy.scope():
        model_lib.set_stage(model, stage.number, stage.pretrained)
        model.compile(optimizer=keras.optimizers.Adam(stage.learning_rate),
                      loss=keras.losses.CategoricalCrossentropy(), metrics=["accuracy"])
    logging.info("stage %d: epochs %d-%d, learning rate %g, %d trainable weights", stage.number,
                 first_epoch + 1, first_epoch + stage.epochs, stage.learning_rate,
                 len(model.trainable_weights))
    fit_history = model.fit(
        inputs.train_data, epochs=first_epoch + stage.epochs, initial_epoch=first_epoch,
        steps_per_epoch=inputs.steps_per_epoch, validation_data=inputs.val_data,
        validation_steps=inputs.validation_steps, class_weight=inputs.class_weight,
        callbacks=callbacks, verbose=inputs.verbose,
        shuffle=False)  # tf.data shuffles; Keras's own shuffling applies to in-memory arrays only.
    losses = fit_history.history.get("loss", [])
    if losses and not math.isfinite(losses[-1]):
        raise TrainingDivergedError(
            f"stage {stage.number}: the training loss became {losses[-1]} in epoch {fit_history.epoch[-1] + 1} "
            f"and training stopped; lower --stage{stage.number}_learning_rate, check the input data, "
            "or turn off --mixed_precision")


def _save_weights_atomically(model: keras.Model, path: str) -> None:
    """A stage's weights appear complete or not at all: a restart trusts their presence."""
    partial = path.replace(".weights.h5", "-partial.weights.h5")
    model.save_weights(partial)
    tf.io.gfile.rename(partial, path, overwrite=True)


def _evaluate_and_export(model: keras.Model, data: dict[str, input_pipeline.SplitData], image_size: int,
                         batch_size: int, paths: OutputPaths) -> dict[str, dict]:
    results = evaluation.predict(model, {split: input_pipeline.eval_dataset(data[split], image_size, batch_size, 1)
                                         for split in ("val", "test")})
    metrics = evaluation.write_report(paths.eval_dir, results)
    print(f"\nEvaluation on original images (image/augmentation == 0), {paths.eval_dir}:\n"
          f"{evaluation.format_table(metrics)}\n", flush=True)
    export.export_saved_model(model, paths.export_dir, image_size)
    model.save(paths.keras_file)
    logging.info("wrote %s, %s, %s", paths.export_dir, paths.keras_file, paths.history_file)
    return metrics
