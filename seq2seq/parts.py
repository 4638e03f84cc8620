"""A training step that computes its batch in parts at the same time, each part in its own thread.

On a CPU TensorFlow runs a graph's recurrent loops (the encoder's and the decoder's time steps,
most of a training step) op after op on one core, and it does not run two loops of one graph side
by side; two calls of a function from two threads do run side by side. ``PartsStep`` splits each
batch into ``parts`` shares of its sentences, computes each share's gradients in its own thread,
and applies their sum in one update: the update of the whole batch, as ``Trainer``'s one-part step
makes it (the summed token loss divided by the batch's token count, clipped by the global norm),
up to the order of floating-point sums.

Dropout: each part draws from its own copy of the model's seed generators' states (part 0 from
the model's own, part k from copies whose seeds are offset by k), so the parts never race on a
generator's state, draw different masks, and a run is reproducible from ``training.seed``. The
states are the part function's arguments (``layers.seed_states``): one trace serves every part.
"""

import concurrent.futures

import keras
import tensorflow as tf

from seq2seq.layers import seed_states
from seq2seq.optimization import sequence_loss
from seq2seq.runtime import usable_cores
from seq2seq.tokenizer import PAD_ID

SEED_STRIDE = 1_000_003  # part k's seed generators start from the model's seeds + k * SEED_STRIDE


def choose_parts(training_config):
    """``training.parallel_parts``; with 0 (automatic), 2 on a machine with 2 or more usable cores
    and no GPU, training with the default strategy and without float16 loss scaling; else 1."""
    if training_config.parallel_parts:
        return training_config.parallel_parts
    if (training_config.distribution != "none" or training_config.mixed_precision
            or tf.config.list_physical_devices("GPU")):
        return 1
    return 2 if usable_cores() >= 2 else 1


def _trimmed(batch):
    """int32 [rows, len] -> the same rows without the columns that are padding in every row."""
    length = tf.reduce_max(tf.reduce_sum(tf.cast(tf.not_equal(batch, PAD_ID), tf.int32), axis=1))
    return batch[:, :length]


def _sum(gradients):
    """The parts' gradients of one variable summed: a tensor, or IndexedSlices with each row once."""
    if not all(isinstance(g, tf.IndexedSlices) for g in gradients):
        return tf.add_n([tf.convert_to_tensor(g) for g in gradients])
    indices = tf.concat([g.indices for g in gradients], 0)
    rows, position = tf.unique(indices)
    values = tf.math.unsorted_segment_sum(tf.concat([g.values for g in gradients], 0), position, tf.size(rows))
    return tf.IndexedSlices(values, rows, gradients[0].dense_shape)


def _values(gradient):
    return gradient.values if isinstance(gradient, tf.IndexedSlices) else gradient


class PartsStep:
    """``step(source, target)`` -> (mean token loss, target token count) of one update on the
    batch (int32 [rows, len] each), computed in ``parts`` parts at once."""

    def __init__(self, model, optimizer, parts, label_smoothing, clip_norm, rdrop=0.0):
        self.model, self.optimizer, self.parts = model, optimizer, parts
        self.label_smoothing, self.clip_norm, self.rdrop = label_smoothing, clip_norm, rdrop
        self.generators = [layer.seed_generator for layer in model._flatten_layers()
                           if isinstance(getattr(layer, "seed_generator", None), keras.random.SeedGenerator)]
        # Part k's copies of the generators' states ([seed, counter] each); part 0 uses the model's.
        self.states = [[g.state for g in self.generators]] + [
            [keras.Variable(g.state.value + [k * SEED_STRIDE, 0], dtype=g.state.dtype, trainable=False,
                            name=f"part{k}_seed_state")
             for g in self.generators] for k in range(1, parts)]
        self._pool = concurrent.futures.ThreadPoolExecutor(parts, "training-part")
        self._part_gradients = tf.function(self._gradients, autograph=False)
        self._traced_gradients = None
        self._update = tf.function(self._apply, autograph=False)
        self.traced = False  # the parts' function and the update (``trace``)

    def _gradients(self, source, target, states):
        """(gradients of the summed token loss, summed loss, token count) of one part, its dropout
        drawing from ``states`` (one int64 [2] variable for each of the model's seed generators)."""
        variables = self.model.trainable_variables
        with seed_states(self.generators, states), tf.GradientTape() as tape:
            loss_sum, tokens = sequence_loss(self.model, _trimmed(source), _trimmed(target), True,
                                             self.label_smoothing, self.rdrop)
        return tape.gradient(loss_sum, variables), loss_sum, tokens

    def _states(self, k):
        return [state.value for state in self.states[k]]  # the tf.Variables of part k's Keras variables

    def part(self, k):
        """Part k's compiled gradients: ``part(k)(source, target)`` -> (gradients, summed loss,
        token count), its dropout drawing from part k's states. Traced on first use, once for all
        parts."""
        if self._traced_gradients is None:
            spec = tf.TensorSpec([None, None], tf.int32)
            self._traced_gradients = self._part_gradients.get_concrete_function(spec, spec, self._states(0))
        function, states = self._traced_gradients, self._states(k)
        return lambda source, target: function(source, target, states)

    def trace(self):
        """Traces the parts' function and the update, before the first batch is there (tf.data
        fills its shuffle buffer in its own threads meanwhile); else the first step traces them."""
        self.part(0)
        gradients, loss_sum, tokens = tf.nest.map_structure(tf.type_spec_from_value,
                                                            self._traced_gradients.structured_outputs)
        self._update.get_concrete_function([gradients] * self.parts, [loss_sum] * self.parts,
                                           [tokens] * self.parts)
        self.traced = True

    def _apply(self, gradients, loss_sums, token_counts):
        """The update of the parts' summed gradients, scaled to the mean token loss and clipped by
        their global norm, as ``tf.clip_by_global_norm`` clips: both factors in one multiplication
        of each gradient. An embedding's gradient stays the rows of its lookups (IndexedSlices)
        until the optimizer gets it, dense, once."""
        tokens = tf.add_n(token_counts)
        scale = 1.0 / tf.maximum(tokens, 1.0)
        summed = [_sum(part_gradients) for part_gradients in zip(*gradients)]
        norm = scale * tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(_values(g))) for g in summed]))
        factor = scale * self.clip_norm * tf.minimum(1.0 / norm, 1.0 / self.clip_norm)
        factor += norm - norm  # NaN where the norm is not finite, as tf.clip_by_global_norm makes it
        clipped = [tf.convert_to_tensor(tf.IndexedSlices(g.values * factor, g.indices, g.dense_shape))
                   if isinstance(g, tf.IndexedSlices) else g * factor for g in summed]
        self.optimizer.apply_gradients(zip(clipped, self.model.trainable_variables))
        return tf.add_n(loss_sums) * scale, tokens

    def __call__(self, source, target):
        rows = int(source.shape[0])
        count = min(self.parts, rows)
        bounds = [rows * k // count for k in range(count + 1)]
        futures = [self._pool.submit(self.part(k), source[start:end], target[start:end])
                   for k, (start, end) in enumerate(zip(bounds, bounds[1:]))]
        gradients, loss_sums, token_counts = zip(*(future.result() for future in futures))
        return self._update(list(gradients), list(loss_sums), list(token_counts))
