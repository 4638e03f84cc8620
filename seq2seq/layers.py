"""Small helpers shared by the encoder and the decoder."""

import contextlib
import threading

import keras
import tensorflow as tf

RNN_LAYERS = {"gru": keras.layers.GRU, "lstm": keras.layers.LSTM, "rnn": keras.layers.SimpleRNN}


def rnn_layer(cell, units, name):
    return RNN_LAYERS[cell](units, return_sequences=True, return_state=True, name=name)


def call_with_weights(layer, *args, **weights):
    """``layer.call(*args, **weights)`` in the layer's name scope, for weights made once before a
    time loop (``Decoder.step_weights``). Keras's ``__call__`` would cast every floating tensor
    argument to the layer's compute dtype, a bfloat16 kernel to float32 at every step (and the
    layer then rounds it back, or multiplies in float32). Only for a built layer."""
    with tf.name_scope(layer.name):
        return layer.call(*args, **weights)


def embedding(vocab_size, embedding_dim, mask_zero=False, stddev=1.0):
    """An embedding initialized N(0, stddev²). The default N(0, 1): Keras's default (uniform ±0.05)
    feeds the recurrent layers so weak a signal that training stalls near a unigram model for
    hundreds of steps on Multi30k (docs/benchmarks.md, "Why embeddings start N(0, 1)")."""
    return keras.layers.Embedding(vocab_size, embedding_dim, mask_zero=mask_zero, name="embedding",
                                  embeddings_initializer=keras.initializers.RandomNormal(stddev=stddev))


_bound = threading.local()  # .states: id(seed generator) -> the variable its draws read in this thread's trace


@contextlib.contextmanager
def seed_states(generators, variables):
    """While a function is traced in this thread: the draws of ``generators`` (Keras
    SeedGenerators) read and advance ``variables`` (int64 [2] ``tf.Variable``s, one each, the
    traced function's arguments) instead of the generators' own states, so that one trace
    serves several sets of states."""
    _bound.states = dict(zip(map(id, generators), variables))
    try:
        yield
    finally:
        _bound.states = {}


def next_seed(generator):
    """``generator.next()``: the seed of one draw, int64 [2], the generator's counter moved on; from
    the variable ``seed_states`` binds to it, where one is bound."""
    state = getattr(_bound, "states", {}).get(id(generator))
    if state is None:
        return generator.next()
    seed = state.read_value()
    state.assign_add(tf.constant([0, 1], state.dtype))
    return seed


def stateless_seed(seed):
    """An int64 [2] seed as TensorFlow's stateless random ops take it, int32 [2], folded as Keras
    folds its seed generators' (so that a mask is the one ``keras.random.dropout`` draws)."""
    return tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)


class Dropout(keras.layers.Dropout):
    """Keras's ``Dropout`` (without ``noise_shape``) whose mask takes 8 random bits an element,
    one byte of a uniform 32-bit draw, rather than a float32 uniform draw each: a quarter of
    the random numbers. The rate is rounded to a multiple of 1/256 (``drop_rate``), at most
    255/256; the kept elements are scaled by 1 / (1 - ``drop_rate``).

    ``variational``: on a sequence [batch, time, features], one mask per sequence, [batch, 1,
    features], shared by all its time steps (Gal and Ghahramani 2016), instead of one per step;
    inputs of another rank get one mask per element as without it."""

    LEVELS = 256  # the values of a random byte
    BYTES = 4  # random bytes in a 32-bit draw

    def __init__(self, rate, variational=False, **kwargs):
        super().__init__(rate, **kwargs)
        self.variational = variational

    @property
    def dropped_levels(self):
        return min(round(self.rate * self.LEVELS), self.LEVELS - 1)

    @property
    def drop_rate(self):
        return self.dropped_levels / self.LEVELS

    def call(self, inputs, training=False):
        if not training or self.rate == 0:
            return inputs
        shape = tf.shape(inputs)
        if self.variational and len(inputs.shape) == 3:
            shape = tf.stack([shape[0], 1, shape[2]])
        return inputs * self.mask(shape, inputs.shape[-1], inputs.dtype)

    def get_config(self):
        return {**super().get_config(), "variational": self.variational}

    def mask(self, shape, features, dtype):
        """A mask to multiply by: float ``dtype`` of ``shape`` (int32 [rank]), 0 with probability
        ``drop_rate``, else 1 / (1 - ``drop_rate``); ``features``: shape's last size, if known."""
        if features and features % self.BYTES == 0:
            draw_shape, flat = tf.concat([shape[:-1], [features // self.BYTES]], 0), False
        else:
            draw_shape, flat = [(tf.reduce_prod(shape) + self.BYTES - 1) // self.BYTES], True
        words = tf.random.stateless_uniform(draw_shape, next_seed(self.seed_generator), minval=None, maxval=None,
                                            dtype=tf.uint32)
        levels = tf.bitcast(words, tf.uint8)  # [..., BYTES]: each word's bytes
        if flat:
            levels = tf.reshape(levels, [-1])[: tf.reduce_prod(shape)]
        keep = tf.reshape(levels, shape) >= self.dropped_levels
        scale = self.LEVELS / (self.LEVELS - self.dropped_levels)
        return tf.where(keep, tf.constant(scale, dtype), tf.constant(0, dtype))


class WordDropout(keras.layers.Layer):
    """Word dropout (Gal and Ghahramani 2016; Sennrich and Zhang 2019): in training, every token's
    embedding is zeroed whole with probability ``rate`` and the kept ones are scaled by
    1 / (1 - rate); outside training the identity. float [..., features] -> the same shape.
    Padding is masked by the token ids, not by the embeddings, so a dropped token stays in place."""

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate
        self.supports_masking = True  # the encoder's embedding mask passes through
        self.seed_generator = keras.random.SeedGenerator(seed) if rate > 0 else None

    def call(self, x, training=False):
        if not training or self.rate == 0:
            return x
        shape = tf.shape(x)
        noise_shape = [shape[axis] for axis in range(len(x.shape) - 1)] + [1]
        return tf.nn.experimental.stateless_dropout(x, self.rate, stateless_seed(next_seed(self.seed_generator)),
                                                    noise_shape=noise_shape)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


class GateNorm(keras.layers.Layer):
    """The layer normalization weights of one recurrent cell (``seq2seq.recurrent.layer_norm``):
    a scale (starting at 1) and a shift (starting at 0) per unit of each gate, for the input
    projection and for the recurrent projection, each float [gates * units]."""

    def __init__(self, gates, units, **kwargs):
        super().__init__(**kwargs)
        self.gates, self.units = gates, units

    def build(self, input_shape=None):
        size = (self.gates * self.units,)
        for part in ("input", "recurrent"):
            setattr(self, f"{part}_scale", self.add_weight(name=f"{part}_scale", shape=size, initializer="ones"))
            setattr(self, f"{part}_shift", self.add_weight(name=f"{part}_shift", shape=size, initializer="zeros"))
        self.built = True

    def get_config(self):
        return {**super().get_config(), "gates": self.gates, "units": self.units}


def drops_after(layer_index, num_layers, placement):
    """Whether dropout follows recurrent layer ``layer_index`` of ``num_layers``: always between
    stacked layers, after the top one only with the ``all_outputs`` placement."""
    return layer_index < num_layers - 1 or placement == "all_outputs"


def track(layer, name, sublayers):
    """Sets ``sublayers`` as attributes ``name_0, name_1, ...`` of ``layer`` and returns them as a list.

    TensorFlow checkpoints follow attributes, not Python lists, so every sub-layer held in a
    list must also be an attribute for its weights to be saved.
    """
    for i, sublayer in enumerate(sublayers):
        setattr(layer, f"{name}_{i}", sublayer)
    return list(sublayers)
