"""Ensembles of models decoded as one: the log of the models' (weighted) mean probability.

``Ensemble`` exposes the interface the search and the scorer use on a ``Seq2Seq`` (``encode``,
``decode_step``, and the teacher-forced call), so the one beam search of ``seq2seq.search``
decodes an ensemble as it decodes one model. At each step

    log p(y_t | y_<t, x) = log Σ_i w_i p_i(y_t | y_<t, x),   Σ_i w_i = 1

as Marian and fairseq combine their members; every member encodes the source once and keeps
its own memory and decoder state. The attention weights are the members' weighted mean. One
model is decoded as itself, never wrapped, so its search graph is the single model's.

The members must share the source and the target SentencePiece models (the same ids mean the
same pieces): ``seq2seq.model_dir.check_shared_tokenizers`` checks that before any model loads,
and their output vocabulary (``load_decoder`` checks it).
"""

import math

import tensorflow as tf


class Ensemble:
    """Models decoded together.

    Args:
      models: list of ``Seq2Seq`` with the same source and target vocabularies.
      weights: list of non-negative floats, one per model, not all 0 (normalized here to sum
        to 1), or None for equal weights.
    """

    def __init__(self, models, weights=None):
        if len(models) < 2:
            raise ValueError("an ensemble needs at least two models")
        weights = [1.0] * len(models) if weights is None else [float(w) for w in weights]
        if len(weights) != len(models) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"need {len(models)} non-negative weights, not all 0, got {weights}")
        if len({tuple(model.settings["output_pieces"] or ()) for model in models}) > 1:
            raise ValueError("the models of an ensemble must have the same output vocabulary")
        self.models = list(models)
        self.weights = [w / sum(weights) for w in weights]
        # A weight of 0 adds log(0) = -inf inside the log-sum-exp: that member counts for nothing.
        self.log_weights = [math.log(w) if w > 0 else -math.inf for w in self.weights]

    @property
    def variables(self):
        """Every member's variables (what an export saves)."""
        return [variable for model in self.models for variable in model.variables]

    def output_index(self, ids):
        """Target ids -> output indices, the members' (they share one output vocabulary)."""
        return self.models[0].output_index(ids)

    def target_ids(self, indices):
        """Output indices -> target ids, the members'."""
        return self.models[0].target_ids(indices)

    def _mix(self, outputs):
        """Members' logits or log-probabilities, each float32 [..., vocab] -> the log of their
        weighted mean probability, float32 [..., vocab]."""
        weighted = [tf.nn.log_softmax(tf.cast(x, tf.float32)) + w for x, w in zip(outputs, self.log_weights)]
        return tf.reduce_logsumexp(tf.stack(weighted), axis=0)

    def encode(self, source, training=False):
        """Encodes the source once per member.

        Args:
          source: int32 [batch, src_len], each row ``pieces + [EOS]`` padded with PAD_ID.
        Returns:
          (memories, states): tuples with one member's ``Seq2Seq.encode`` output each.
        """
        encoded = [model.encode(source, training=training) for model in self.models]
        return tuple(memory for memory, _ in encoded), tuple(state for _, state in encoded)

    def step_weights(self, output_multiple=1):
        """The tuple of the members' ``step_weights(output_multiple)``, made once before a search's time loop."""
        return tuple(model.step_weights(output_multiple) for model in self.models)

    def decode_step(self, token, state, memory, weights=None, beam=1):
        """One step of every member.

        Args:
          token: int32 [rows], the previous target token.
          state, memory: tuples of the members' decoder states and memories (from ``encode``).
          weights: ``step_weights()`` (default: made here).
          beam: as ``Seq2Seq.decode_step``'s (the memories one row per ``beam`` rows).
        Returns:
          log-probabilities float32 [rows, vocab] (the log of the weighted mean probability),
          the tuple of new states, and the weighted mean attention weights float32 [rows, src_len].
        """
        weights = self.step_weights() if weights is None else weights
        steps = [model.decode_step(token, s, m, w, beam) for model, s, m, w in zip(self.models, state, memory, weights)]
        attention = tf.add_n([w * tf.cast(weights, tf.float32) for w, (_, _, weights) in zip(self.weights, steps)])
        return self._mix([logits for logits, _, _ in steps]), tuple(s for _, s, _ in steps), attention

    def __call__(self, inputs, training=False):
        """Teacher-forced log-probabilities: ``inputs`` ``(source, target_in)``, int32 [batch,
        src_len] and [batch, tgt_len] -> float32 [batch, tgt_len, vocab], the log of the
        members' weighted mean probability (normalized: ``log_softmax`` leaves it as it is)."""
        return self._mix([model(inputs, training=training) for model in self.models])
