"""The training state, its checkpoints, and checkpoint averaging.

    checkpoints/  the whole state (model, optimizer, schedule, counters), the last few
    best/         the model with the best validation BLEU, and that BLEU
    averaging/    the last validated models, for ``training.average_checkpoints``
"""

import os

import numpy as np
import tensorflow as tf

from seq2seq import model_dir as md


class TrainingState:
    """What a resumed run continues from, besides the model's and the optimizer's variables:
    the epoch and the batches of it already trained, the best validation BLEU and the validations
    since it, the step last validated and the step last averaged; and the checkpoint managers
    that save it.

    Every worker saves (as tf.distribute requires): the chief into the model directory, the
    others into a scratch directory (``write_dir``) that is thrown away.
    """

    def __init__(self, model, optimizer, learning_rate, loss_scale, write_dir, keep_checkpoints, average_last):
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        # A checkpoint from before this counter existed restores none: its epoch starts over.
        self.epoch_batches = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch_batches")
        self.best_bleu = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_bleu")
        self.bad_validations = tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_validations")
        self.last_validated = tf.Variable(-1, dtype=tf.int64, trainable=False, name="last_validated")
        self.averaged_at = tf.Variable(-1, dtype=tf.int64, trainable=False, name="averaged_at")
        self.iterations = optimizer.iterations
        state = dict(model=model, optimizer=optimizer, learning_rate=learning_rate, epoch=self.epoch,
                     epoch_batches=self.epoch_batches,
                     best_bleu=self.best_bleu, bad_validations=self.bad_validations,
                     last_validated=self.last_validated, averaged_at=self.averaged_at)
        if loss_scale is not None:
            state["loss_scale"] = loss_scale
        self.checkpoints = tf.train.CheckpointManager(
            tf.train.Checkpoint(**state), os.path.join(write_dir, md.CHECKPOINTS), max_to_keep=keep_checkpoints,
            step_counter=self.iterations)
        self.best = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=model, best_bleu=self.best_bleu), os.path.join(write_dir, md.BEST),
            max_to_keep=1, step_counter=self.iterations)
        self.averaging = None
        if average_last > 1:
            self.averaging = tf.train.CheckpointManager(
                tf.train.Checkpoint(model=model), os.path.join(write_dir, md.AVERAGING), max_to_keep=average_last,
                step_counter=self.iterations)

    @property
    def step(self):
        return int(self.iterations.numpy())

    def restore(self, path):
        """Restores the whole state from a checkpoint of ``checkpoints/``."""
        self.checkpoints.checkpoint.restore(path)

    def save(self):
        return self.checkpoints.save(checkpoint_number=self.step)

    def save_validated(self, improved):
        """After a validation: the best model if ``improved``, the model for averaging, the state."""
        if improved:
            self.best.save(checkpoint_number=self.step)
        if self.averaging is not None:
            self.averaging.save(checkpoint_number=self.step)
        self.save()

    def last_saved_step(self):
        """The step of the last checkpoint of the state, or None."""
        path = self.checkpoints.latest_checkpoint
        return checkpoint_step(path) if path else None


def checkpoint_step(path):
    """The step of a checkpoint path (``.../ckpt-STEP``)."""
    return int(path.rsplit("-", 1)[1])


def average_weights(model, paths):
    """Sets ``model``'s weights to the mean of its weights in the checkpoints ``paths`` (each
    saved from a ``tf.train.Checkpoint(model=...)`` of the same architecture)."""
    checkpoint = tf.train.Checkpoint(model=model)
    total = None
    for path in paths:
        checkpoint.restore(path).expect_partial()
        weights = [np.asarray(w.numpy(), np.float64) for w in model.weights]
        total = weights if total is None else [t + w for t, w in zip(total, weights)]
    model.set_weights([(t / len(paths)).astype(w.dtype) for t, w in zip(total, model.get_weights())])
