"""Scoring given translations (forced decoding): log P(y | x) of a target under the model.

One teacher-forced pass in the graph, no search: the decoder reads ``[BOS] + pieces`` and the
log-probabilities of ``pieces + [EOS]`` are summed. The length-normalized score is the one the
search ranks by and ``--n-best`` prints, ``log P(y | x) / lp(|y|)`` (``|y|`` counting the EOS),
so a hypothesis of the search scores here what the search gave it. The same function serves
``translate.py --score`` and the SavedModel's ``score`` signature; a ``Seq2Seq`` and an
``Ensemble`` are scored alike.
"""

import numpy as np
import tensorflow as tf

from seq2seq.dataset import pad
from seq2seq.search import length_penalty
from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID


def forced_log_probs(model, source, target):
    """Log-probability of each target given its source, teacher-forced.

    Args:
      model: a ``Seq2Seq`` or an ``Ensemble`` (called as ``model((source, target_in))`` for
        logits or log-probabilities [batch, tgt_len, vocab]).
      source: int32 [batch, src_len], each row ``pieces + [EOS]`` padded with PAD_ID.
      target: int32 [batch, tgt_len], each row ``pieces + [EOS]`` padded with PAD_ID.
    Returns:
      log_probs: float32 [batch], Σ_t log p(target_t | target_<t, source) over the unpadded
        positions. lengths: int32 [batch], the unpadded positions (EOS included).
    """
    batch = tf.shape(target)[0]
    target_in = tf.concat([tf.fill([batch, 1], BOS_ID), target[:, :-1]], axis=1)
    logits = tf.cast(model((source, target_in), training=False), tf.float32)  # [batch, tgt_len, output size]
    picked = tf.gather(logits, model.output_index(target), batch_dims=2) - tf.reduce_logsumexp(logits, axis=-1)
    mask = tf.not_equal(target, PAD_ID)
    return (tf.reduce_sum(tf.where(mask, picked, 0.0), axis=1),
            tf.reduce_sum(tf.cast(mask, tf.int32), axis=1))


class Scorer:
    """Scores (source, target) sentence pairs with one model or an ensemble.

    ``translate_config`` gives ``length_penalty`` (α), ``max_input_length`` (longer sources
    are cut, as ``Translator`` cuts them) and ``batch_size``. One ``tf.function`` with a fixed
    input signature: every batch shape runs through one trace.
    """

    def __init__(self, model, tokenizer, translate_config):
        self.model, self.tokenizer, self.config = model, tokenizer, translate_config
        spec = tf.TensorSpec([None, None], tf.int32)
        self._score = tf.function(lambda source, target: forced_log_probs(self.model, source, target),
                                  input_signature=[spec, spec], autograph=False)

    def warm_up(self):
        """Compiles the pass on a one-token pair."""
        one = np.full((1, 1), EOS_ID, np.int32)
        self._score(one, one)

    def score(self, sources, targets, batch_size=None, truncated=None):
        """Scores each pair of ``sources`` and ``targets`` (lists of str of one length).

        Returns a list of ``(log_prob, score)`` float pairs, in input order. A source without
        any subword is read as ``[EOS]``; an empty target as ``[EOS]`` alone. The indices of
        sources cut to ``max_input_length`` are appended to the list ``truncated``.
        """
        from seq2seq.translate import encode_sources

        batch_size = batch_size or self.config.batch_size
        encoded, cut = encode_sources(self.tokenizer, sources, self.config.max_input_length)
        if truncated is not None:
            truncated.extend(cut)
        wanted = [ids + [EOS_ID] for ids in self.tokenizer.encode_target(targets)]
        # Sorting by length keeps padding low; the results go back to their input positions.
        order = sorted(range(len(sources)), key=lambda i: (len(encoded[i]), len(wanted[i])))
        results = [None] * len(sources)
        alpha = self.config.length_penalty
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            log_probs, lengths = self._score(pad([encoded[i] for i in chunk]), pad([wanted[i] for i in chunk]))
            scores = (log_probs / length_penalty(lengths, alpha)).numpy()
            log_probs = log_probs.numpy()
            for row, i in enumerate(chunk):
                results[i] = (float(log_probs[row]), float(scores[row]))
        return results
