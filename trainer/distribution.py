"""Chooses the tf.distribute strategy: the one place that knows about devices and clusters.

The same code then runs on a laptop CPU, on one machine with several GPUs
(MirroredStrategy) and on a cluster described by TF_CONFIG, as Vertex AI sets it for
multi-replica jobs (MultiWorkerMirroredStrategy).
"""

import json
import os

import tensorflow as tf
from absl import logging


def cluster_size(tf_config: str | None = None) -> int:
    """Number of training tasks (chief + workers) in TF_CONFIG; 1 without a cluster."""
    config = json.loads(tf_config if tf_config is not None else os.environ.get("TF_CONFIG", "{}"))
    cluster = config.get("cluster", {})
    return max(1, len(cluster.get("chief", [])) + len(cluster.get("worker", [])))


def configure_cpu_replicas(count: int) -> None:
    """Splits the CPU into `count` logical devices so MirroredStrategy runs `count` replicas.

    Idempotent; it must run before TensorFlow initialises its devices.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    configured = tf.config.get_logical_device_configuration(cpu)
    if configured is not None and len(configured) == count:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError as error:
        available = len(tf.config.list_logical_devices("CPU"))
        if available >= count:
            return
        raise RuntimeError(
            f"--cpu_replicas {count} must split the CPU before TensorFlow initialises its devices, "
            f"but this process already runs with {available} logical CPU(s); start a fresh process") from error


def choose_strategy(cpu_replicas: int = 1) -> tf.distribute.Strategy:
    """MultiWorkerMirrored for a TF_CONFIG cluster, else Mirrored over GPUs or logical CPUs."""
    if cluster_size() > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if tf.config.list_physical_devices("GPU"):
        if cpu_replicas > 1:
            logging.warning("--cpu_replicas %d ignored: training on the local GPUs", cpu_replicas)
        return tf.distribute.MirroredStrategy()
    if cpu_replicas > 1:
        configure_cpu_replicas(cpu_replicas)
    return tf.distribute.MirroredStrategy([f"/cpu:{index}" for index in range(cpu_replicas)])


def worker_count(strategy: tf.distribute.Strategy) -> int:
    """Processes (machines) in the job; each reads its own share of the train shards."""
    resolver = strategy.cluster_resolver
    if resolver is None:
        return 1
    cluster = resolver.cluster_spec().as_dict()
    return max(1, len(cluster.get("chief", [])) + len(cluster.get("worker", [])))


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the task that writes checkpoints, logs, evaluation and the export.

    The chief is the `chief` task, or worker 0 in a cluster without one.
    """
    resolver = strategy.cluster_resolver
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


class AnyWorker:
    """Whether any worker says yes, answered identically on every worker.

    Workers must take the same decision at the same step (stop for a SIGTERM only one of
    them received, or wait for the chief), or the others block in the next all-reduce. One
    all-reduce of a single integer across the cluster decides; a single machine needs none.
    Every worker must call it the same number of times.
    """

    def __init__(self, strategy: tf.distribute.Strategy):
        self._strategy = strategy
        self._single_worker = worker_count(strategy) == 1
        self._sum = tf.function(self._sum_over_replicas)

    def __call__(self, local_answer: bool) -> bool:
        if self._single_worker:
            return local_answer
        return bool(self._sum(tf.constant(int(local_answer))) > 0)

    def _sum_over_replicas(self, value: tf.Tensor) -> tf.Tensor:
        per_replica = self._strategy.run(lambda: tf.identity(value))
        return self._strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
