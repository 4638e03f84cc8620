"""The output layer: attentional vectors [..., units] -> logits [..., output size].

With ``bfloat16`` (``model.output_bfloat16``) the layer's matmul, most of the arithmetic of a
training step and of a search step, runs in bfloat16 on the float32 weights, and the bias is
added to its float32 result. A separate bias add keeps oneDNN on its plain bfloat16 matmul: its
fused bfloat16 matmul-with-bias kernel runs far slower than the float32 one on CPUs with AMX.
``auto`` chooses bfloat16 where the CPU computes it natively (AVX512_BF16 or AMX), float32
elsewhere, where bfloat16 would be emulated.
"""

import keras
import tensorflow as tf

BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bfloat16(cpuinfo="/proc/cpuinfo"):
    """Whether the CPU's flags (Linux's ``cpuinfo``) include AVX512_BF16 or AMX-BF16; False where
    the file cannot be read."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in BFLOAT16_FLAGS)


def resolve_bfloat16(setting):
    """``model.output_bfloat16`` (True, False or "auto") -> whether the output layer computes in bfloat16."""
    return cpu_has_bfloat16() if setting == "auto" else bool(setting)


def _matmul(x, kernel, bfloat16, transpose_b=False):
    """``x`` [..., k] times ``kernel`` [k, n] ([n, k] with ``transpose_b``) -> [..., n], in
    bfloat16 with a float32 result if ``bfloat16``, else in x's dtype."""
    dtype = x.dtype
    if bfloat16:
        x, kernel = tf.cast(x, tf.bfloat16), tf.cast(kernel, tf.bfloat16)
    else:
        kernel = tf.cast(kernel, dtype)
    flat = x if x.shape.rank == 2 else tf.reshape(x, [-1, x.shape[-1]])
    y = tf.matmul(flat, kernel, transpose_b=transpose_b)
    if x.shape.rank != 2:
        y = tf.reshape(y, tf.concat([tf.shape(x)[:-1], tf.shape(y)[-1:]], 0))
    return tf.cast(y, tf.float32) if bfloat16 else y


class OutputProjection(keras.layers.Dense):
    """``keras.layers.Dense`` (its weights: ``kernel`` [units, output size], ``bias``) whose
    matmul can run in bfloat16 (see the module docstring)."""

    def __init__(self, units, bfloat16=False, **kwargs):
        super().__init__(units, **kwargs)
        self.bfloat16 = bfloat16

    def call(self, x):
        if not self.bfloat16:
            return super().call(x)
        logits = _matmul(x, self.kernel, True) + tf.cast(self.bias, tf.float32)
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

    def call(self, x):
        if self.projection is not None:
            x = self.projection(x)
        embeddings = self.embedding.embeddings
        if self.pieces is not None:
            embeddings = tf.gather(embeddings, self.pieces)
        scaled = embeddings * (self.embedding.output_dim ** -0.5)
        logits = _matmul(x, scaled, self.bfloat16, transpose_b=True)
        return tf.cast(logits + tf.cast(self.bias, logits.dtype), self.compute_dtype)
