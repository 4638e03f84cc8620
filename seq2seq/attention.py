"""Additive attention (Bahdanau et al., 2015)."""

import keras
import tensorflow as tf

from seq2seq import precision


def batched_matmul(x, y):
    """``tf.matmul`` of x [batch, m, k] and y [batch, k, n] (float32: TensorFlow's BatchMatMulV3,
    in its gradient too), for the attention's batches of small matrices (a row or a few each).

    TensorFlow's oneDNN rewrite turns ``tf.matmul``'s BatchMatMulV2 into oneDNN's batched matmul,
    whose set-up per call outweighs such products; it leaves BatchMatMulV3 to Eigen's kernel.
    """
    if x.dtype != tf.float32 or y.dtype != tf.float32:
        return tf.matmul(x, y)

    def matmul(a, b, adj_x=False, adj_y=False):
        return tf.raw_ops.BatchMatMulV3(x=a, y=b, adj_x=adj_x, adj_y=adj_y, Tout=tf.float32)

    @tf.custom_gradient
    def product(x, y):
        return matmul(x, y), lambda upstream: (matmul(upstream, y, adj_y=True), matmul(x, upstream, adj_x=True))

    return product(x, y)


class BahdanauAttention(keras.layers.Layer):
    """Additive attention: ``score(q, k) = vᵀ tanh(W₁ q + W₂ k)`` (Bahdanau et al., 2015, §A.1.2).

    Keys are projected once per source batch (``project_keys``) and reused for every query. With
    ``bfloat16`` the query and key projections run in bfloat16 (seq2seq/precision.py).
    """

    def __init__(self, units, bfloat16=False, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.bfloat16 = bfloat16
        self.query_projection = keras.layers.Dense(units, use_bias=False, name="query_projection")
        self.key_projection = keras.layers.Dense(units, use_bias=True, name="key_projection")
        self.energy = keras.layers.Dense(1, use_bias=False, name="energy")

    def build(self, query_shape, keys_shape=None, values_shape=None, source_mask_shape=None):
        # project_keys may have built the key projection already.
        for layer, shape in ((self.query_projection, query_shape), (self.key_projection, values_shape),
                             (self.energy, (None, self.units))):
            if not layer.built:
                layer.build(shape)
        self.built = True

    def project_keys(self, values):
        """W₂ k for every source position. values: float [batch, src_len, value_dim] -> [batch, src_len, units]."""
        if not self.bfloat16:
            return self.key_projection(values)
        # The bias apart: oneDNN's bfloat16 matmul with a fused bias is slow (seq2seq/output.py).
        keys = precision.matmul(values, self.key_projection.kernel, True) + self.key_projection.bias
        return tf.cast(keys, values.dtype)

    def query_kernel(self):
        """The query projection's kernel in bfloat16, to cast once before a time loop; None
        without ``bfloat16`` (the Keras layer computes)."""
        return precision.kernel(self.query_projection.kernel, True) if self.bfloat16 else None

    def call(self, query, keys, values, source_mask, query_kernel=None, probes=None):
        """Attends ``query`` over the source.

        Args:
          query: float [batch, tgt_len, query_dim], one query per target position, or [batch,
            query_dim] for one decoding step.
          keys: float [batch, src_len, units], from ``project_keys(values)``.
          values: float [batch, src_len, value_dim], the encoder outputs.
          source_mask: bool [batch, src_len], False at source padding.
          query_kernel: ``query_kernel()``, made once before a time loop (default: made here).
          probes: for one step of a probed time loop (``seq2seq.loop_products``), a dict of
            ``query`` and ``context`` probes added to the query projection and to the context.
        Returns:
          context: float [batch, tgt_len, value_dim] (for one step [batch, value_dim]), the
            weighted sum of ``values``.
          weights: float [batch, tgt_len, src_len] (for one step [batch, src_len]); each row sums
            to 1 and is 0 at padding.
        """
        # New axes by expand_dims, not by indexing with None: a strided slice's gradient
        # scatters into a zero tensor of the whole input's shape, at every step of a time loop.
        step = query.shape.rank == 2
        if query_kernel is not None or self.bfloat16:
            projected = precision.matmul(query, self.query_kernel() if query_kernel is None else query_kernel)
        else:
            projected = self.query_projection(query)  # [batch, (tgt_len,) units]
        if probes is not None:
            projected += probes["query"]
        if step:
            hidden = tf.tanh(tf.expand_dims(projected, 1) + keys)  # [batch, src_len, units]
        else:
            hidden = tf.tanh(tf.expand_dims(projected, 2) + tf.expand_dims(keys, 1))  # [batch, tgt_len, src_len, units]
        scores = tf.squeeze(self.energy(hidden), -1)  # [batch, (tgt_len,) src_len]
        mask = source_mask if step else tf.expand_dims(source_mask, 1)
        weights = tf.nn.softmax(tf.where(mask, scores, tf.cast(-1e9, scores.dtype)), axis=-1)
        if step:
            context = tf.squeeze(batched_matmul(tf.expand_dims(weights, 1), values), 1)
            return context if probes is None else context + probes["context"], weights
        return batched_matmul(weights, values), weights

    def get_config(self):
        return {**super().get_config(), "units": self.units, "bfloat16": self.bfloat16}
