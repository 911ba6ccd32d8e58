"""Checkpoints that let a killed or preempted job resume where it stopped, on every worker.

A training checkpoint holds the model, the running stage's optimizer and the
`TrainingState` counters. As the TensorFlow multi-worker guide prescribes, every worker
saves (saving may involve collectives), but only the chief writes to the job's checkpoint
dir; the others write to a temporary dir they delete at once. Every worker restores the
chief's latest checkpoint, so all of them resume from the same weights and step.

The chief alone also keeps the weights of the best epoch on val (`BestWeights`): the
final evaluation and the export use them.
"""

import shutil
import tempfile

import keras
import tensorflow as tf

CHECKPOINT_NAME = "ckpt"
BEST_DIR = "best"
BEST_NAME = "best"
_STAGE_KEY = "state/stage/.ATTRIBUTES/VARIABLE_VALUE"


class TrainingState(tf.Module):
    """Where training stands. Host-side counters, identical on every worker.

    `stage` names the stage whose optimizer the checkpoint holds; epochs and steps are
    counted across stages. The epoch sums are those of the per-step mean loss and
    accuracy in the running epoch, so an epoch interrupted and resumed still reports its
    whole mean. `best_score` is the best val macro ROC-AUC so far (-1 before any).
    """

    def __init__(self):
        super().__init__(name="training_state")
        self.stage = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.epoch_loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.epoch_accuracy_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.best_score = tf.Variable(-1.0, dtype=tf.float64, trainable=False)
        self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False)


def saved_stage(path: str) -> int:
    """The stage whose optimizer the checkpoint at `path` holds (read before building one)."""
    return int(tf.train.load_checkpoint(path).get_tensor(_STAGE_KEY))


class TrainCheckpoints:
    """The job's training checkpoints: the chief keeps the last `keep`; every worker restores them."""

    def __init__(self, directory: str, chief: bool, keep: int):
        self.directory = directory
        self._chief = chief
        self._keep = keep

    def latest(self) -> str | None:
        return tf.train.latest_checkpoint(self.directory)

    def save(self, checkpoint: tf.train.Checkpoint, step: int) -> str | None:
        """Saves on every worker; returns the chief's path (None on other workers)."""
        if self._chief:
            manager = tf.train.CheckpointManager(checkpoint, self.directory, max_to_keep=self._keep,
                                                 checkpoint_name=CHECKPOINT_NAME)
            return manager.save(checkpoint_number=step)
        scratch = tempfile.mkdtemp(prefix="cxr-worker-checkpoint-")
        try:
            tf.train.CheckpointManager(checkpoint, scratch, max_to_keep=1,
                                       checkpoint_name=CHECKPOINT_NAME).save(checkpoint_number=step)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return None


class BestWeights:
    """The model weights of the best epoch on val, in `<checkpoint_dir>/best/` (chief only)."""

    def __init__(self, model: keras.Model, checkpoint_dir: str):
        self._checkpoint = tf.train.Checkpoint(model=model)
        self._manager = tf.train.CheckpointManager(self._checkpoint, f"{checkpoint_dir.rstrip('/')}/{BEST_DIR}",
                                                   max_to_keep=1, checkpoint_name=BEST_NAME)

    def save(self, epoch: int) -> str:
        return self._manager.save(checkpoint_number=epoch)

    def restore(self) -> str | None:
        """Loads the best weights into the model; returns their path, or None if there are none."""
        path = self._manager.latest_checkpoint
        if path:
            self._checkpoint.restore(path).assert_existing_objects_matched()
        return path
