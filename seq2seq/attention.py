"""Additive attention (Bahdanau et al., 2015)."""

import keras
import tensorflow as tf


class BahdanauAttention(keras.layers.Layer):
    """Additive attention: ``score(q, k) = vᵀ tanh(W₁ q + W₂ k)`` (Bahdanau et al., 2015, §A.1.2).

    Keys are projected once per source batch (``project_keys``) and reused for every query.
    """

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
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
        return self.key_projection(values)

    def call(self, query, keys, values, source_mask):
        """Attends ``query`` over the source.

        Args:
          query: float [batch, tgt_len, query_dim], one query per target position, or [batch,
            query_dim] for one decoding step.
          keys: float [batch, src_len, units], from ``project_keys(values)``.
          values: float [batch, src_len, value_dim], the encoder outputs.
          source_mask: bool [batch, src_len], False at source padding.
        Returns:
          context: float [batch, tgt_len, value_dim] (for one step [batch, value_dim]), the
            weighted sum of ``values``.
          weights: float [batch, tgt_len, src_len] (for one step [batch, src_len]); each row sums
            to 1 and is 0 at padding.
        """
        # New axes by expand_dims, not by indexing with None: a strided slice's gradient
        # scatters into a zero tensor of the whole input's shape, at every step of a time loop.
        step = query.shape.rank == 2
        projected = self.query_projection(query)  # [batch, (tgt_len,) units]
        if step:
            hidden = tf.tanh(tf.expand_dims(projected, 1) + keys)  # [batch, src_len, units]
        else:
            hidden = tf.tanh(tf.expand_dims(projected, 2) + tf.expand_dims(keys, 1))  # [batch, tgt_len, src_len, units]
        scores = tf.squeeze(self.energy(hidden), -1)  # [batch, (tgt_len,) src_len]
        mask = source_mask if step else tf.expand_dims(source_mask, 1)
        weights = tf.nn.softmax(tf.where(mask, scores, tf.cast(-1e9, scores.dtype)), axis=-1)
        if step:
            return tf.squeeze(tf.matmul(tf.expand_dims(weights, 1), values), 1), weights
        return tf.matmul(weights, values), weights

    def get_config(self):
        return {**super().get_config(), "units": self.units}
