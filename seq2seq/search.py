"""Decoding as a TensorFlow graph: one ``tf.while_loop`` over time for a whole batch.

Each sentence stops at its own EOS, or at its length limit
``max(min_length, ceil(max_length_ratio × source length))``; the loop ends when every sentence
of the batch has stopped. ``Searcher`` wraps the search in a ``tf.function`` with a fixed
input signature, so any batch shape runs through one trace.
"""

import tensorflow as tf

from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID


def length_limits(source, max_length_ratio, min_length):
    """Per-sentence output length limits (EOS included).

    Args:
      source: int32 [batch, src_len], padded with PAD_ID.
    Returns:
      int32 [batch].
    """
    source_length = tf.reduce_sum(tf.cast(tf.not_equal(source, PAD_ID), tf.float32), axis=1)
    limit = tf.cast(tf.math.ceil(max_length_ratio * source_length), tf.int32)
    return tf.maximum(limit, min_length)


def greedy_search(model, source, max_length_ratio, min_length):
    """Greedy decoding: the most probable token at every step.

    Args:
      model: a ``Seq2Seq``.
      source: int32 [batch, src_len], each row ``pieces + [EOS]`` padded with PAD_ID.
    Returns:
      tokens: int32 [batch, out_len], each row ``pieces + [EOS]`` (no EOS if the limit cut it),
        padded with PAD_ID.
      scores: float32 [batch], the sum of the chosen tokens' log-probabilities.
      attention: float32 [batch, out_len, src_len], the attention weights of each output token.
    """
    batch = tf.shape(source)[0]
    limits = length_limits(source, max_length_ratio, min_length)
    memory, state = model.encode(source)
    tokens = tf.TensorArray(tf.int32, size=0, dynamic_size=True)
    attention = tf.TensorArray(tf.float32, size=0, dynamic_size=True)

    def not_done(t, token, finished, *_):
        return tf.logical_not(tf.reduce_all(finished))

    def body(t, token, finished, scores, state, tokens, attention):
        log_probs, state, weights = model.decode_step(token, state, memory)
        best = tf.argmax(log_probs, axis=-1, output_type=tf.int32)
        best = tf.where(finished, PAD_ID, best)
        best_score = tf.gather(log_probs, best, batch_dims=1)
        scores += tf.where(finished, 0.0, best_score)
        weights = tf.where(finished[:, None], 0.0, tf.cast(weights, tf.float32))
        finished = finished | tf.equal(best, EOS_ID) | (t + 1 >= limits)
        return t + 1, best, finished, scores, state, tokens.write(t, best), attention.write(t, weights)

    start = (tf.constant(0), tf.fill([batch], BOS_ID), tf.zeros([batch], tf.bool), tf.zeros([batch]), state,
             tokens, attention)
    _, _, _, scores, _, tokens, attention = tf.while_loop(not_done, body, start)
    return (tf.transpose(tokens.stack()), scores, tf.transpose(attention.stack(), [1, 0, 2]))


class Searcher:
    """Compiled search for one model: ``searcher(source)`` -> (tokens, scores, attention) tensors."""

    def __init__(self, model, max_length_ratio, min_length):
        self.model = model
        self.max_length_ratio = float(max_length_ratio)
        self.min_length = int(min_length)
        self._search = tf.function(self._greedy, input_signature=[tf.TensorSpec([None, None], tf.int32)])

    def _greedy(self, source):
        return greedy_search(self.model, source, self.max_length_ratio, self.min_length)

    def __call__(self, source):
        """source: int32 [batch, src_len] (numpy or tensor) -> tokens, scores, attention."""
        return self._search(tf.convert_to_tensor(source, tf.int32))
