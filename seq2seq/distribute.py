"""The distribution strategy of ``training.distribution`` and this process's role in it."""

import os

import tensorflow as tf

from seq2seq.errors import UserError


class Cluster:
    """The tf.distribute strategy and this worker's role.

    ``none``: the default strategy (one device). ``mirrored``: MirroredStrategy over every local
    GPU (every logical CPU device when there is none). ``multi_worker``:
    MultiWorkerMirroredStrategy over the cluster of ``TF_CONFIG``; its chief (the "chief" task,
    or else worker 0) writes the model directory. Make it before any other TensorFlow work
    (MultiWorkerMirroredStrategy requires it).
    """

    def __init__(self, distribution):
        self.is_chief, self.worker = True, None  # worker: "type:index" under multi_worker
        self._all_reduce_one = None  # the barrier's tf.function, traced on first use
        if distribution == "mirrored":
            devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
            self.strategy = tf.distribute.MirroredStrategy([device.name for device in devices])
        elif distribution == "multi_worker":
            if not os.environ.get("TF_CONFIG"):
                raise UserError("training.distribution=multi_worker needs the cluster in the TF_CONFIG environment "
                                "variable (see the README)")
            self.strategy = tf.distribute.MultiWorkerMirroredStrategy()
            resolver = self.strategy.cluster_resolver
            has_chief = "chief" in resolver.cluster_spec().as_dict()
            self.is_chief = resolver.task_type == "chief" or (
                not has_chief and resolver.task_type == "worker" and resolver.task_id == 0)
            self.worker = f"{resolver.task_type}:{resolver.task_id}"
        else:
            self.strategy = tf.distribute.get_strategy()

    @property
    def replicas(self):
        return self.strategy.num_replicas_in_sync

    def barrier(self):
        """Waits until every worker gets here: a collective all-reduce of one number, in a graph
        (MultiWorkerMirroredStrategy runs collectives from a tf.function only)."""
        if self.replicas == 1:
            return
        if self._all_reduce_one is None:
            self._all_reduce_one = tf.function(lambda: self.strategy.run(
                lambda: tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM,
                                                                       tf.constant(1.0))))
        self._all_reduce_one()
