"""Two-stage training in a loop of our own under any tf.distribute strategy, then evaluation and export.

Stage 1 trains the head with ResNet50 frozen; stage 2 trains the whole network at a
lower learning rate (the seed project's recipe); a stage with 0 epochs is skipped.
Epochs are numbered across stages (stage 2 starts at epoch stage1_epochs + 1), so
TensorBoard, history.json and the checkpoints read as one run.

The loop is the one tensorflow/models official/ runs through Orbit, reduced to what this
model needs: the model, each stage's Adam and the metrics live in `strategy.scope()`; a
`tf.function` runs `steps_per_loop` steps per host call through `strategy.run`, reading
per-worker input from `strategy.distribute_datasets_from_function`; the loss is summed per
example and divided by the global batch (`tf.nn.compute_average_loss`), so the gradients
the optimizer all-reduces average over the global batch. The same code runs under
MirroredStrategy (GPUs, logical CPUs) and MultiWorkerMirroredStrategy (TF_CONFIG), where
Keras' own `Model.fit` cannot run (keras-team/keras#20585). `Controller` holds the loop's
state (Orbit's Controller); `StageTrainer` is one stage's compiled steps (its StandardTrainer).

Keras 3 updates BatchNormalization's moving statistics per replica without aggregating
them; each loop ends by averaging them over all replicas, so every worker holds (and
checkpoints, validates and exports) the same model.

The host syncs once per loop: it checks the loss (NaN or infinite stops the job), writes
TensorBoard scalars (chief), and asks every worker whether one of them received SIGTERM;
if so, all checkpoint and exit together. At each epoch end every worker evaluates the val
originals (the same numbers everywhere, so no worker waits for another's decision), the
chief keeps the weights of the best epoch by val macro ROC-AUC, and all save a training
checkpoint (see `trainer.checkpoints`). A job started again with the same flags resumes
from the latest checkpoint at its stage and step. After training, the chief loads the
best epoch's weights, fits the temperature (`trainer.evaluation.calibration`) and then
the decision rule (`--decision_rule`, `trainer.evaluation.operating_point`) on val,
evaluates val and test under both (`trainer.evaluate`), writes the model card, and
exports the model with all three; test never chooses anything.
"""

import dataclasses
import math
import os
import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from cxr_core import contract, decision_rule
from serving import export, model_store, test_time_augmentation
from trainer import checkpoints, distribution, evaluate, input_pipeline, optimization, outputs, preemption
from trainer import model as model_lib
from trainer.config import TrainConfig
from trainer.evaluation import calibration, evaluation_set, model_card, operating_point, shortcut_audit, triage
from trainer.evaluation import metrics as metrics_lib
from trainer.evaluation import predictions as predictions_lib

GIGABYTE = 1024 ** 3


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; training stopped instead of saving garbage."""


@dataclasses.dataclass(frozen=True)
class Stage:
    """Which layers train (`model.set_stage`), over which epochs (0-based, across stages), how fast."""

    number: int
    first_epoch: int
    epochs: int
    learning_rate: float  # For a global batch of optimization.REFERENCE_BATCH_SIZE.
    pretrained: bool  # The base started from trained weights: its BatchNormalization stays frozen.

    @property
    def end_epoch(self) -> int:
        return self.first_epoch + self.epochs


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """What the config, the train split and the replicas make of a step and an epoch."""

    global_batch_size: int
    steps_per_epoch: int
    class_weights: tuple[float, ...]  # One per class, 1.0 each without --class_weight balanced.


class StageTrainer:
    """One stage's optimizer, metrics and compiled loop: Orbit's StandardTrainer, reduced.

    `train(iterator, n)` runs n steps in one host call. Each replica computes the gradients
    of its per-example losses (weighted by class; plus `auxiliary_loss_weight` × the
    auxiliary classifier's, see `model_lib.build_training_model`) summed and divided by the
    global batch; the optimizer all-reduces them across replicas and workers and applies them.
    The loss it reports is the served head's alone. With `jit_compile` the forward and
    backward pass is compiled with XLA (the all-reduce and the update stay outside it).
    """

    def __init__(self, strategy: tf.distribute.Strategy, training_model: keras.Model,
                 optimizer: keras.optimizers.Optimizer, settings: LoopSettings, auxiliary_loss_weight: float,
                 jit_compile: bool):
        self.optimizer = optimizer
        self._strategy = strategy
        self._model = training_model
        self._variables = training_model.trainable_variables
        self._auxiliary_loss_weight = auxiliary_loss_weight
        self._global_batch_size = settings.global_batch_size
        self._class_weights = tf.constant(settings.class_weights, tf.float32)
        with strategy.scope():
            self._loss = keras.metrics.Mean("loss")
            self._accuracy = keras.metrics.CategoricalAccuracy("accuracy")
        self._batch_statistics = [variable for layer in training_model.layers
                                  if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
                                  for variable in (layer.moving_mean, layer.moving_variance)]
        self._gradients = tf.function(self._compute_gradients, jit_compile=jit_compile)
        self._loop = tf.function(self._run_steps)

    def train(self, iterator: tf.distribute.DistributedIterator, num_steps: int) -> dict[str, float]:
        """Runs `num_steps` steps; returns their mean loss and accuracy over all replicas."""
        for metric in (self._loss, self._accuracy):
            metric.reset_state()
        results = self._loop(iterator, tf.constant(num_steps, tf.int32))
        return {name: float(value) for name, value in results.items()}

    @property
    def learning_rate(self) -> float:
        return float(self.optimizer.learning_rate)

    def _run_steps(self, iterator: tf.distribute.DistributedIterator, num_steps: tf.Tensor) -> dict[str, tf.Tensor]:
        for _ in tf.range(num_steps):
            self._strategy.run(self._replica_step, args=next(iterator))
        if self._batch_statistics and self._strategy.num_replicas_in_sync > 1:
            self._strategy.run(self._average_batch_statistics)
        return {"loss": self._loss.result(), "accuracy": self._accuracy.result()}

    def _average_batch_statistics(self) -> None:
        """Sets every replica's BatchNormalization moving statistics to their mean over all replicas.

        Keras 3 updates them per replica without aggregation, so replicas (and workers) drift
        apart; the moving averages are linear in the batch statistics, so their mean is the
        moving average of the global batch means, as tf.keras computed it.
        """
        means = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.MEAN, [tf.identity(variable.value) for variable in self._batch_statistics])
        for variable, mean in zip(self._batch_statistics, means):
            variable.assign(mean)

    def _replica_step(self, images: tf.Tensor, labels: tf.Tensor) -> None:
        gradients, example_losses, probabilities = self._gradients(images, labels)
        self.optimizer.apply(gradients, self._variables)
        self._loss.update_state(example_losses)
        self._accuracy.update_state(labels, probabilities)

    def _compute_gradients(self, images: tf.Tensor, labels: tf.Tensor) -> tuple[list, tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            probabilities, auxiliary_probabilities = self._model(images, training=True)
            weights = tf.gather(self._class_weights, tf.argmax(labels, axis=-1))
            example_losses = keras.losses.categorical_crossentropy(labels, probabilities) * weights
            auxiliary_losses = keras.losses.categorical_crossentropy(labels, auxiliary_probabilities) * weights
            loss = tf.nn.compute_average_loss(example_losses + self._auxiliary_loss_weight * auxiliary_losses,
                                              global_batch_size=self._global_batch_size)
            scaled_loss = self.optimizer.scale_loss(loss)  # Loss scaling under float16; else unchanged.
        return tape.gradient(scaled_loss, self._variables), example_losses, probabilities


def class_weights(mode: str, class_counts: Sequence[int]) -> dict[int, float] | None:
    """`balanced` weighs each class by total / (classes × its count); `none` gives None."""
    if mode == "none":
        return None
    if mode == "balanced":
        total = sum(class_counts)
        return {index: total / (len(class_counts) * count) for index, count in enumerate(class_counts)}
    raise ValueError(f"class_weight must be none or balanced, got {mode!r}")



class Controller:
    """The training loop's state on one object: Orbit's Controller, for two stages on one model.

    It holds the strategy, the model and the training model around it, the counters
    (`checkpoints.TrainingState`), the checkpoint store, the SIGTERM watcher and the
    cross-worker vote, the val originals, and on the chief the best epoch's weights,
    `history.json` and the TensorBoard writers; while a stage runs, its `StageTrainer` (with
    its optimizer) and the checkpoint that saves it. Built, it has restored the latest
    checkpoint's weights and counters. `train` runs the unfinished stages: `begin_stage`,
    then `train_epoch` per epoch: `train_loop` (one host call) and `train_loop_end` (log,
    scalars, checkpoint or stop) until the epoch is done, then `end_epoch` (`evaluate` on
    val, best weights, checkpoint, history). `evaluate_and_export` ends the run on the chief.
    """

    def __init__(self, config: TrainConfig, strategy: tf.distribute.Strategy,
                 data: dict[str, input_pipeline.SplitData], settings: LoopSettings, paths: outputs.OutputPaths):
        self.config = config
        self.strategy = strategy
        self.data = data
        self.settings = settings
        self.paths = paths
        self.chief = distribution.is_chief(strategy)
        initial_weights = model_lib.resolve_weights(config.weights)
        with strategy.scope():
            self.model = model_lib.build_model(config.image_size, initial_weights)
            self.training_model = model_lib.build_training_model(self.model)
        pretrained = initial_weights is not None
        self.stages = (Stage(1, 0, config.stage1_epochs, config.stage1_learning_rate, pretrained),
                       Stage(2, config.stage1_epochs, config.stage2_epochs, config.stage2_learning_rate, pretrained))
        self.state = checkpoints.TrainingState()
        self.store = checkpoints.TrainCheckpoints(paths.checkpoint_dir, self.chief, config.keep_checkpoints)
        self.best = checkpoints.BestWeights(self.model, paths.checkpoint_dir) if self.chief else None
        self.history = outputs.EpochHistory(paths.history_file) if self.chief else None
        self.writers: dict[str, tf.summary.SummaryWriter] | None = None  # Opened by `train` (chief).
        self.termination = preemption.TerminationRequest()
        self.any_worker = distribution.AnyWorker(strategy)
        self.stage: Stage | None = None
        self.stage_trainer: StageTrainer | None = None
        self.checkpoint: tf.train.Checkpoint | None = None
        self.latest = self.store.latest()
        if self.latest:
            self._restore_counters_and_weights()
        self.cached = _cached_splits(config, data, distribution.worker_count(strategy))
        self.val_data = input_pipeline.eval_dataset(data["val"], config.image_size, settings.global_batch_size,
                                                    cache="val" in self.cached)

    @property
    def finished(self) -> bool:
        return int(self.state.epoch) >= self.stages[-1].end_epoch

    def train(self) -> None:
        """Runs the unfinished epochs of every stage; leaves the model with the last epoch's weights."""
        if self.finished:
            return
        train_data = self.strategy.distribute_datasets_from_function(
            lambda context: input_pipeline.train_dataset(
                self.data["train"], self.config.image_size,
                context.get_per_replica_batch_size(self.settings.global_batch_size),
                seed=self.config.seed + int(self.state.step), input_context=context, cache="train" in self.cached,
                deterministic=self.config.deterministic))
        iterator = iter(train_data)
        if self.chief:
            self.writers = _summary_writers(self.paths.tensorboard_dir)
        with self.termination:
            for stage in self.stages:
                if int(self.state.epoch) >= stage.end_epoch:
                    continue
                self.begin_stage(stage)
                while int(self.state.epoch) < stage.end_epoch:
                    self.train_epoch(iterator)

    def begin_stage(self, stage: Stage) -> None:
        """Sets the stage's trainable layers and builds its optimizer, restored if the latest checkpoint holds it."""
        model_lib.set_stage(self.model, stage.number, stage.pretrained)
        head_scale = self.config.head_learning_rate_scale
        with self.strategy.scope():
            optimizer = optimization.build_optimizer(
                optimization.learning_rate_schedule(
                    stage.learning_rate, self.settings.global_batch_size, self.config.warmup_steps,
                    self.config.learning_rate_decay, stage.epochs * self.settings.steps_per_epoch),
                self.config.mixed_precision, self.training_model.trainable_variables,
                lambda variable: head_scale if model_lib.is_head_variable(variable) else 1.0)
        if self.latest and checkpoints.saved_stage(self.latest) == stage.number:
            tf.train.Checkpoint(optimizer=optimizer).read(self.latest).expect_partial()
        self.state.stage.assign(stage.number)
        self.stage = stage
        self.stage_trainer = StageTrainer(self.strategy, self.training_model, optimizer, self.settings,
                                          self.config.auxiliary_loss_weight, self.config.jit_compile)
        self.checkpoint = tf.train.Checkpoint(model=self.training_model, optimizer=optimizer, state=self.state)
        logging.info("stage %d: epochs %d-%d, %d trainable weights", stage.number, stage.first_epoch + 1,
                     stage.end_epoch, len(self.training_model.trainable_weights))

    def train_epoch(self, iterator: tf.distribute.DistributedIterator) -> None:
        """Runs the rest of the current epoch, one host call per loop, then ends it."""
        loops = 0
        while int(self.state.step_in_epoch) < self.settings.steps_per_epoch:
            figures = self.train_loop(iterator)
            loops += 1
            self.train_loop_end(figures, loops)
        self.end_epoch()

    def train_loop(self, iterator: tf.distribute.DistributedIterator) -> dict[str, float]:
        """One host call: the epoch's next steps, up to `steps_per_loop`; returns the loop's figures.

        Raises:
          TrainingDivergedError: the loss is NaN or infinite (the counters stay before the loop).
        """
        state, steps_per_epoch = self.state, self.settings.steps_per_epoch
        num_steps = min(self.config.steps_per_loop, steps_per_epoch - int(state.step_in_epoch))
        start = time.perf_counter()
        results = self.stage_trainer.train(iterator, num_steps)
        steps_per_second = num_steps / (time.perf_counter() - start)
        if not math.isfinite(results["loss"]):
            raise TrainingDivergedError(
                f"stage {self.stage.number}: the training loss became {results['loss']} by step "
                f"{int(state.step) + num_steps} (epoch {int(state.epoch) + 1}) and training stopped; lower "
                f"--stage{self.stage.number}_learning_rate, check the input data, or set --mixed_precision=none")
        state.step.assign_add(num_steps)
        state.step_in_epoch.assign_add(num_steps)
        state.epoch_loss_sum.assign_add(results["loss"] * num_steps)
        state.epoch_accuracy_sum.assign_add(results["accuracy"] * num_steps)
        return {**results, "learning_rate": self.stage_trainer.learning_rate, "steps_per_second": steps_per_second}

    def train_loop_end(self, figures: dict[str, float], loops: int) -> None:
        """Logs the loop and writes its scalars; checkpoints every N loops, or for SIGTERM, then stops.

        `loops` counts the loops this process ran in the epoch. Every worker votes on stopping.

        Raises:
          preemption.Terminated: a worker received SIGTERM; the checkpoint is saved.
        """
        state, stage = self.state, self.stage
        logging.info("stage %d epoch %d step %d (%d/%d): loss %.4f accuracy %.4f learning rate %.3g, %.2f steps/s",
                     stage.number, int(state.epoch) + 1, int(state.step), int(state.step_in_epoch),
                     self.settings.steps_per_epoch, figures["loss"], figures["accuracy"], figures["learning_rate"],
                     figures["steps_per_second"])
        if self.writers:
            with self.writers["train"].as_default(step=int(state.step)):
                for name, value in figures.items():
                    tf.summary.scalar(name, value)
        terminate = self.any_worker(self.termination.requested)
        epoch_continues = int(state.step_in_epoch) < self.settings.steps_per_epoch
        every = self.config.checkpoint_every_loops
        if terminate or (every and loops % every == 0 and epoch_continues):
            path = self.store.save(self.checkpoint, int(state.step))
            logging.info("checkpoint at stage %d step %d: %s", stage.number, int(state.step),
                         path or "saved by the chief")
        if terminate:
            message = (f"stopped by SIGTERM at stage {stage.number} step {int(state.step)} after a checkpoint; "
                       f"start the job again with the same flags to resume (exit code {preemption.EXIT_CODE})")
            logging.warning("%s", message)
            raise preemption.Terminated(message)

    def end_epoch(self) -> None:
        """Validates; keeps the weights if val macro ROC-AUC improved; moves the counters on and checkpoints."""
        state, steps_per_epoch = self.state, self.settings.steps_per_epoch
        entry = {"stage": self.stage.number, "epoch": int(state.epoch) + 1,
                 "loss": float(state.epoch_loss_sum) / steps_per_epoch,
                 "accuracy": float(state.epoch_accuracy_sum) / steps_per_epoch,
                 "learning_rate": self.stage_trainer.learning_rate, **self.evaluate()}
        score = entry["val_roc_auc"]
        if score is None or score > float(state.best_score):
            if score is None:
                logging.warning("val macro ROC-AUC is undefined (val lacks classes): epoch %d counts as the best so "
                                "far", entry["epoch"])
            state.best_score.assign(-1.0 if score is None else score)
            state.best_epoch.assign(entry["epoch"])
            if self.best:
                self.best.save(entry["epoch"])
        entry["best_epoch"] = int(state.best_epoch)
        state.epoch.assign_add(1)
        state.step_in_epoch.assign(0)
        state.epoch_loss_sum.assign(0.0)
        state.epoch_accuracy_sum.assign(0.0)
        path = self.store.save(self.checkpoint, int(state.step))
        logging.info("epoch %d: %s; checkpoint %s", entry["epoch"], _format_figures(entry),
                     path or "saved by the chief")
        if self.chief:
            self.history.record(entry)
            _write_validation_summaries(self.writers, entry, int(state.step))

    def evaluate(self) -> dict[str, float | None]:
        """The per-epoch validation of the current weights (`validation_metrics`)."""
        return validation_metrics(self.model, self.val_data)

    def evaluate_and_export(self, decision_spec: decision_rule.DecisionSpec,
                            run_description: dict) -> dict[str, metrics_lib.SplitMetrics]:
        """On the chief: the best epoch's weights evaluated on val and test, then exported with what val chose.

        Both splits are scored with `--test_time_zooms` (`serving.test_time_augmentation`) as the export
        will score. Val chooses the temperature (`trainer.evaluation.calibration`) and then, on the scaled
        probabilities, the decision rule; test is scored once under both (`trainer.evaluate`: metrics,
        calibration, operating point, subgroups, shortcut audit, failure gallery). The model card goes into
        the job dir and, with the zooms, the temperature and the rule, into the export's contract.
        Returns the val and test metrics.
        """
        best = self.best.restore()
        logging.info("evaluating the weights of epoch %d, the best on val (macro ROC-AUC %.4f): %s",
                     int(self.state.best_epoch), float(self.state.best_score), best)
        config, paths = self.config, self.paths
        zooms = test_time_augmentation.parse_zooms(config.test_time_zooms)
        sets = {split: evaluate.score(self.model, evaluation_set.read_records(
                    split, list(self.data[split].shards), config.image_size,
                    f"the {split} originals of {config.data_dir}"), zooms)
                for split in ("val", "test")}
        val = sets["val"]
        temperature = calibration.fit_temperature(val.data.labels, val.model_probabilities)
        rule = operating_point.choose_decision_rule(decision_spec, val.data.labels,
                                                    val.predictions(temperature).probabilities,
                                                    self.data["train"].class_counts)
        manifest = shortcut_audit.read_manifest(config.data_dir)
        result = evaluate.evaluate(
            self.model, sets, rule, temperature, paths.eval_dir,
            source_table=shortcut_audit.source_table_from_manifest(manifest), audited_set="test",
            floors=triage.parse_min_sensitivity(config.min_sensitivity), floor_set="val",
            baseline=evaluate.fit_pixel_baseline(list(self.data["train"].shards), config.image_size, val.data))
        card = model_card.model_card(model_card.ModelCardInputs(
            model=config.job_dir, run_description=run_description, manifest=manifest, metrics=result.metrics,
            calibration=result.calibration, temperature=temperature, rule=rule,
            rule_reason=triage.rule_reason(str(decision_spec)), audit=result.audit, audited_set="test",
            subgroups=result.subgroups, floor_checks=result.floor_checks))
        with tf.io.gfile.GFile(os.path.join(paths.job_dir, model_card.FILE_NAME), "w") as output:
            output.write(card)
        print(f"\nEvaluation on original images (image/augmentation == 0), {paths.eval_dir}:\n{result.text}\n",
              flush=True)
        export.export_saved_model(self.model, paths.export_dir, model_store.ModelContract(
            image_size=config.image_size, class_names=contract.CLASS_NAMES,
            preprocessing_version=contract.PREPROCESSING_VERSION, training_config=run_description,
            decision_rule=rule, temperature=temperature, model_card=card, test_time_zooms=zooms))
        self.model.save(paths.keras_file)  # Never compiled, so it carries no optimizer state.
        logging.info("wrote %s, %s, %s, %s", paths.export_dir, paths.keras_file, paths.history_file,
                     model_card.FILE_NAME)
        return result.metrics

    def _restore_counters_and_weights(self) -> None:
        """Loads the model and counters of the latest checkpoint (a stage's optimizer is loaded once built)."""
        tf.train.Checkpoint(model=self.training_model, state=self.state).read(self.latest).expect_partial()
        epoch = int(self.state.epoch)
        stage = next((stage for stage in self.stages if stage.first_epoch <= epoch < stage.end_epoch),
                     self.stages[-1])
        logging.info("resuming from checkpoint %s: stage %d step %d (epoch %d, step %d of %d in the epoch)",
                     self.latest, stage.number, int(self.state.step), epoch + 1, int(self.state.step_in_epoch),
                     self.settings.steps_per_epoch)


def run(config: TrainConfig, strategy: tf.distribute.Strategy) -> dict[str, metrics_lib.SplitMetrics]:
    """Checks the data, trains the unfinished epochs, then (on the chief) evaluates and exports.

    Returns the val and test metrics on the chief, {} on other workers.

    Raises:
      input_pipeline.DataError: the data dir cannot feed training, or its val split cannot set
        `config.decision_rule` (before any training).
      TrainingDivergedError: the loss became NaN or infinite.
      preemption.Terminated: SIGTERM stopped training after a checkpoint.
    """
    data = input_pipeline.inspect_data(config.data_dir, config.image_size)
    for split in data.values():
        logging.info("%s: %d examples %s in %d shard(s)", split.name, split.num_examples,
                     dict(zip(contract.CLASS_NAMES, split.class_counts)), len(split.shards))
    decision_spec = _decision_spec(config.decision_rule, data["val"])
    settings = _loop_settings(config, data["train"], strategy.num_replicas_in_sync)
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    optimization.set_precision(config.mixed_precision)
    paths = outputs.OutputPaths(config.job_dir, config.checkpoint_dir, config.tensorboard_dir)
    run_description = describe_run(config, strategy, settings)
    logging.info("%s, %d replica(s) in sync on %d worker(s): global batch %d, %d steps per epoch, "
                 "%d steps per loop, learning rates %s, class weights %s", type(strategy).__name__,
                 strategy.num_replicas_in_sync, distribution.worker_count(strategy), settings.global_batch_size,
                 settings.steps_per_epoch, config.steps_per_loop, run_description["learning_rates"],
                 settings.class_weights)
    if distribution.is_chief(strategy):
        outputs.write_json_atomically(paths.config_file, run_description)

    controller = Controller(config, strategy, data, settings, paths)
    controller.train()
    if not controller.chief:
        controller.any_worker(False)  # Waits for the chief's evaluation and export.
        return {}
    metrics = controller.evaluate_and_export(decision_spec, run_description)
    controller.any_worker(False)
    return metrics


def describe_run(config: TrainConfig, strategy: tf.distribute.Strategy, settings: LoopSettings) -> dict:
    """The run's configuration as `config.json` and the export's metadata hold it."""
    return {
        "config": dataclasses.asdict(config),
        "strategy": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
        "workers": distribution.worker_count(strategy),
        "global_batch_size": settings.global_batch_size,
        "steps_per_epoch": settings.steps_per_epoch,
        "learning_rates": {
            f"stage{number}": optimization.scaled_learning_rate(rate, settings.global_batch_size)
            for number, rate in ((1, config.stage1_learning_rate), (2, config.stage2_learning_rate))},
        "class_names": list(contract.CLASS_NAMES),
        "preprocessing_version": contract.PREPROCESSING_VERSION,
        "tensorflow_version": tf.__version__,
    }


def validation_metrics(model: keras.Model, val_data: tf.data.Dataset) -> dict[str, float | None]:
    """The per-epoch validation: loss, accuracy and macro ROC-AUC on the val originals."""
    predictions = predictions_lib.predict(model, {"val": val_data})["val"]
    # Accuracy and ROC-AUC are point figures: no intervals, so no bootstrap, every epoch.
    metrics = metrics_lib.classification_metrics(predictions.labels, predictions.probabilities, resamples=0)
    true_class = predictions.probabilities[np.arange(len(predictions.labels)), predictions.labels]
    return {"val_loss": float(-np.mean(np.log(np.clip(true_class, keras.config.epsilon(), 1.0)))),
            "val_accuracy": metrics.accuracy.value, "val_roc_auc": metrics.macro.roc_auc.value}


def _decision_spec(text: str, val: input_pipeline.SplitData) -> decision_rule.DecisionSpec:
    """The parsed `--decision_rule`, once val is known to hold what setting it needs."""
    try:
        spec = decision_rule.parse_decision_rule(text)
        operating_point.check_decision_rule(spec, val.class_counts)
    except ValueError as error:
        raise input_pipeline.DataError(str(error)) from error
    return spec


def _cached_splits(config: TrainConfig, data: dict[str, input_pipeline.SplitData], workers: int) -> set[str]:
    """The splits whose decoded images stay in memory; each worker caches only its share of train."""
    cached = input_pipeline.choose_cache(config.cache, {
        "train": input_pipeline.decoded_bytes(data["train"].num_examples / workers, config.image_size),
        "val": input_pipeline.decoded_bytes(data["val"].num_examples, config.image_size),
    }, int(config.cache_budget_gb * GIGABYTE))
    logging.info("decoded images cached in memory after their first pass (--cache %s, budget %g GB): %s",
                 config.cache, config.cache_budget_gb, ", ".join(sorted(cached)) or "none")
    return cached


def _loop_settings(config: TrainConfig, train: input_pipeline.SplitData, replicas: int) -> LoopSettings:
    global_batch_size = config.batch_size * replicas
    full_batches = train.num_examples // global_batch_size
    if not full_batches:
        raise input_pipeline.DataError(
            f"the train split has {train.num_examples} examples, fewer than one global batch of "
            f"{global_batch_size} (--batch_size per replica × replicas); lower --batch_size")
    weights = class_weights(config.class_weight, train.class_counts)
    return LoopSettings(
        global_batch_size=global_batch_size,
        steps_per_epoch=min(full_batches, config.steps_per_epoch or full_batches),
        class_weights=tuple(weights[index] for index in range(contract.NUM_CLASSES)) if weights
        else (1.0,) * contract.NUM_CLASSES)


def _summary_writers(tensorboard_dir: str) -> dict[str, tf.summary.SummaryWriter]:
    return {name: tf.summary.create_file_writer(os.path.join(tensorboard_dir, name))
            for name in ("train", "validation")}


def _write_validation_summaries(writers: dict[str, tf.summary.SummaryWriter], entry: dict, step: int) -> None:
    with writers["validation"].as_default(step=step):
        for name in ("loss", "accuracy", "roc_auc"):
            if entry[f"val_{name}"] is not None:
                tf.summary.scalar(name, entry[f"val_{name}"])
    for writer in writers.values():
        writer.flush()


def _format_figures(entry: dict) -> str:
    return ", ".join(f"{name} {'n/a' if value is None else f'{value:.4f}'}" for name, value in entry.items()
                     if name not in ("stage", "epoch", "best_epoch", "learning_rate"))
