"""The output layer: attentional vectors [..., units] -> logits [..., output size].

With ``bfloat16`` (``model.output_bfloat16``, seq2seq/precision.py) the layer's matmul, most of
the arithmetic of a training step and of a search step, runs in bfloat16 on the float32
weights, and the bias is added to its float32 result. A separate bias add keeps oneDNN on its
plain bfloat16 matmul: its fused bfloat16 matmul-with-bias kernel runs far slower than the
float32 one on CPUs with AMX.
"""

import keras
import tensorflow as tf

from seq2seq import precision


def _padded(kernel, bias, columns, multiple, axis):
    """``{"kernel", "bias"}`` with the output columns (``axis`` of the kernel) padded up to a
    multiple of ``multiple``: zero weights and a bias of −inf, so that the extra logits are −inf."""
    extra = -columns % multiple
    if extra:
        kernel = tf.pad(kernel, [[0, extra] if a == axis else [0, 0] for a in range(2)])
        bias = tf.pad(bias, [[0, extra]], constant_values=-float("inf"))
    return {"kernel": kernel, "bias": bias}


class OutputProjection(keras.layers.Dense):
    """``keras.layers.Dense`` (its weights: ``kernel`` [units, output size], ``bias``) whose
    matmul can run in bfloat16 (see the module docstring)."""

    def __init__(self, units, bfloat16=False, **kwargs):
        super().__init__(units, **kwargs)
        self.bfloat16 = bfloat16

    def step_kernel(self, multiple=1):
        """The weights as ``call`` multiplies by them, to make once before a time loop: ``kernel``
        (bfloat16 with ``bfloat16``) and the float32 ``bias``, their columns padded up to a
        multiple of ``multiple`` (the extra logits −inf)."""
        kernel = precision.kernel(self.kernel, self.bfloat16, self.compute_dtype)
        return _padded(kernel, tf.cast(self.bias, tf.float32), self.units, multiple, axis=1)

    def call(self, x, kernel=None):
        """x [..., units] -> logits [..., output size]; ``kernel``: ``step_kernel()`` (default: made
        here with bfloat16, else Dense's own computation)."""
        if kernel is None and not self.bfloat16:
            return super().call(x)
        kernel = self.step_kernel() if kernel is None else kernel
        logits = precision.matmul(x, kernel["kernel"]) + tf.cast(kernel["bias"], x.dtype)
        return tf.cast(logits, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "bfloat16": self.bfloat16}


class TiedOutput(keras.layers.Layer):
    """Output layer that shares its weights with the target embedding (Press & Wolf, 2017).

    ``logits = (W x) Eᵀ / √d + b``: the attentional vector is projected to the embedding size d
    (skipped when both sizes agree) and scored against every target embedding. The embeddings
    start N(0, 1) for the recurrent input, so without the 1/√d the initial logits would be about
    √d times larger than an untied output layer's and training starts far slower. With
    ``pieces`` (the output vocabulary's target ids) only those embeddings are scored; with
    ``bfloat16`` the scoring matmul runs in bfloat16 (see the module docstring).
    """

    def __init__(self, embedding, units, pieces=None, bfloat16=False, **kwargs):
        super().__init__(**kwargs)
        self.embedding = embedding
        self.units = units
        self.bfloat16 = bfloat16
        self.pieces = None if pieces is None else tuple(pieces)
        self.size = embedding.input_dim if pieces is None else len(pieces)
        self.projection = (None if units == embedding.output_dim else
                           keras.layers.Dense(embedding.output_dim, use_bias=False, name="projection"))

    def build(self, input_shape):
        if self.projection is not None:
            self.projection.build(input_shape)
        self.bias = self.add_weight(name="bias", shape=(self.size,), initializer="zeros")
        self.built = True

    def step_kernel(self, multiple=1):
        """The weights as ``call`` multiplies by them, to make once before a time loop: ``kernel``,
        the scored embeddings, scaled, [output size, embedding_dim] (bfloat16 with ``bfloat16``),
        and ``bias``, the output rows padded up to a multiple of ``multiple`` (the extra logits −inf)."""
        embeddings = self.embedding.embeddings
        if self.pieces is not None:
            embeddings = tf.gather(embeddings, self.pieces)
        scaled = embeddings * (self.embedding.output_dim ** -0.5)
        kernel = precision.kernel(scaled, True) if self.bfloat16 else scaled
        return _padded(kernel, self.bias, self.size, multiple, axis=0)

    def call(self, x, kernel=None):
        """x [..., units] -> logits [..., output size]; ``kernel``: ``step_kernel()`` (default: made here)."""
        if self.projection is not None:
            x = self.projection(x)
        kernel = self.step_kernel() if kernel is None else kernel
        logits = precision.matmul(x, kernel["kernel"], self.bfloat16, transpose_b=True)
        return tf.cast(logits + tf.cast(kernel["bias"], logits.dtype), self.compute_dtype)
