"""Checkpoint placement across workers, the best-epoch weights, SIGTERM handling and worker agreement."""

import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import checkpoints, distribution, preemption


def small_model() -> keras.Model:
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(3)(inputs))


def training_checkpoint(stage: int, step: int) -> tuple[tf.train.Checkpoint, keras.Model]:
    model = small_model()
    state = checkpoints.TrainingState()
    state.stage.assign(stage)
    state.step.assign(step)
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    return tf.train.Checkpoint(model=model, optimizer=optimizer, state=state), model


def test_the_chief_keeps_the_last_checkpoints_and_names_them_by_step(tmp_path):
    store = checkpoints.TrainCheckpoints(str(tmp_path / "checkpoints"), chief=True, keep=2)
    checkpoint, _ = training_checkpoint(stage=2, step=0)

    paths = [store.save(checkpoint, step) for step in (3, 6, 9)]

    assert [os.path.basename(path) for path in paths] == ["ckpt-3", "ckpt-6", "ckpt-9"]
    assert store.latest() == paths[-1]
    assert sorted(name for name in os.listdir(tmp_path / "checkpoints") if name.endswith(".index")) == [
        "ckpt-6.index", "ckpt-9.index"]
    assert checkpoints.saved_stage(store.latest()) == 2


def test_other_workers_save_to_a_temporary_dir_they_delete(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    monkeypatch.setattr("tempfile.tempdir", None)  # Re-read TMPDIR.
    store = checkpoints.TrainCheckpoints(str(tmp_path / "checkpoints"), chief=False, keep=2)
    checkpoint, _ = training_checkpoint(stage=1, step=0)

    assert store.save(checkpoint, 4) is None
    assert not (tmp_path / "checkpoints").exists()
    assert os.listdir(tmp_path / "scratch") == []
    assert store.latest() is None


def test_a_restored_checkpoint_gives_back_weights_and_counters(tmp_path):
    store = checkpoints.TrainCheckpoints(str(tmp_path), chief=True, keep=1)
    saved, saved_model = training_checkpoint(stage=2, step=17)
    store.save(saved, 17)
    restored, restored_model = training_checkpoint(stage=0, step=0)

    restored.read(store.latest()).assert_existing_objects_matched()

    assert (int(restored.state.stage), int(restored.state.step)) == (2, 17)
    for saved_weight, restored_weight in zip(saved_model.weights, restored_model.weights):
        np.testing.assert_array_equal(saved_weight.numpy(), restored_weight.numpy())


def test_best_weights_keep_one_epoch_and_restore_it(tmp_path):
    model = small_model()
    best = checkpoints.BestWeights(model, str(tmp_path))
    assert best.restore() is None
    best.save(epoch=2)
    kernel_of_epoch_2 = model.layers[-1].kernel.numpy()
    model.layers[-1].kernel.assign(np.zeros((4, 3), np.float32))
    best.save(epoch=5)
    model.layers[-1].kernel.assign(kernel_of_epoch_2)

    assert os.path.basename(best.restore()) == "best-5"
    np.testing.assert_array_equal(model.layers[-1].kernel.numpy(), 0.0)
    assert [name for name in os.listdir(tmp_path / "best") if name.endswith(".index")] == ["best-5.index"]


def test_sigterm_is_recorded_instead_of_ending_the_process():
    previous = signal.getsignal(signal.SIGTERM)
    with preemption.TerminationRequest() as termination:
        assert not termination.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert termination.requested
    assert signal.getsignal(signal.SIGTERM) is previous
    assert preemption.Terminated("stopped").code == 128 + signal.SIGTERM


@pytest.mark.parametrize("answer", [False, True])
def test_a_single_worker_agrees_with_itself(answer):
    assert distribution.AnyWorker(distribution.choose_strategy(cpu_replicas=1))(answer) is answer
