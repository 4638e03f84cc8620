"""Drawing the next token at random, for the search's sampling mode (``seq2seq.search``).

A token is drawn from ``softmax(logits / T)`` over the row's ``topk`` most probable tokens (all
when ``topk`` is 0) by the Gumbel-max trick: ``argmax_v (logits_v / T + g_v)`` with ``g_v =
-log(-log u_v)`` and ``u_v`` uniform on (0, 1) is distributed as that softmax (Gumbel, 1954;
Maddison et al., 2014). The uniforms are not drawn from a random stream but computed by hashing
``(seed, line, sample, step, token)``: the samples of an input line depend on the seed and the
line's number only, not on which other lines share its batch, the batch size, or how a pipe
split the input into chunks.
"""

from collections import namedtuple

import tensorflow as tf

from seq2seq.tokenizer import BOS_ID, PAD_ID

Sampling = namedtuple("Sampling", "topk temperature")
Sampling.__doc__ = """Sampling instead of beam search: ``topk`` python int (0: the whole
distribution), ``temperature`` python float > 0 (→ 0: greedy; 1: the model's distribution)."""


def _mix(x):
    """An integer hash with good avalanche (Wellons's ``lowbias32``): uint32 [...] -> uint32 [...]."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = x * tf.constant(0x7FEB352D, tf.uint32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15))
    x = x * tf.constant(0x846CA68B, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def hash_combine(key, value):
    """key uint32 [...], value int32/int64 [...] (broadcast) -> uint32 [...], a new key."""
    return _mix(tf.bitwise.bitwise_xor(key, _mix(tf.cast(value, tf.uint32))))


def seed_key(seed):
    """seed: int64 scalar -> uint32 scalar, the key that every draw's hash starts from."""
    low, high = tf.bitwise.bitwise_and(seed, 0xFFFFFFFF), tf.bitwise.right_shift(seed, 32)
    return hash_combine(_mix(tf.cast(high, tf.uint32)), low)


def uniforms(keys, tokens):
    """keys: uint32 [rows], tokens: int32 [rows, n] -> float32 [rows, n], uniform on (0, 1)."""
    bits = tf.bitwise.right_shift(hash_combine(keys[:, None], tokens), 8)  # 24 bits, exact in float32
    return (tf.cast(bits, tf.float32) + 0.5) / float(1 << 24)


def sample_tokens(logits, sampling, keys):
    """One token per row, drawn from ``softmax(logits / T)`` over the row's ``topk`` most probable
    tokens (the whole vocabulary when ``topk`` is 0). PAD and BOS, never an output, are never drawn.

    Args:
      logits: float32 [rows, vocab], logits or log-probabilities (the vocabulary size static).
      sampling: a ``Sampling``.
      keys: uint32 [rows], each row's key for this step (``hash_combine`` of the seed, the line,
        the sample and the step): the same key and logits draw the same token.
    Returns:
      (log_probs float32 [rows, 1], tokens int32 [rows, 1]): the drawn tokens and their
      log-probabilities under ``logits`` themselves (untempered, over the whole vocabulary).
    """
    vocab = logits.shape[-1]
    ids = tf.range(vocab)
    outputs = tf.not_equal(ids, PAD_ID) & tf.not_equal(ids, BOS_ID)  # [vocab]
    candidates = tf.where(outputs[None], logits, -float("inf"))
    if 0 < sampling.topk < vocab:
        candidates, tokens = tf.math.top_k(candidates, sampling.topk)  # [rows, topk]
    else:
        tokens = tf.broadcast_to(ids[None], tf.shape(candidates))
    gumbel = -tf.math.log(-tf.math.log(uniforms(keys, tokens)))
    drawn = tf.argmax(candidates / sampling.temperature + gumbel, axis=-1, output_type=tf.int32)[:, None]
    drawn = tf.gather(tokens, drawn, batch_dims=1)  # [rows, 1]
    return tf.gather(tf.nn.log_softmax(logits), drawn, batch_dims=1), drawn
