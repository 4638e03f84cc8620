"""Beam search as one TensorFlow graph: a ``tf.while_loop`` over time on [sentences × beam] rows.

The same search serves validation, ``translate.py`` and the exported SavedModel; beam size 1 is
greedy decoding.

- The source is encoded once per batch (attention keys projected once), never re-encoded; the
  decoder state is tiled to ``batch × beam`` rows, the encoder memory stays one row per sentence
  (a sentence's hypotheses attend over it together: ``decode_step``'s ``beam``).
- Each step extends every alive hypothesis by every token and keeps the ``beam`` best
  extensions (cumulative log-probability) among those of the sentence's alive hypotheses. An
  extension that ends in EOS is finished: it moves to the sentence's finished list, is never
  extended again, and its beam slot closes, so a sentence holds at most ``beam`` hypotheses,
  alive and finished together. With beam 1 this is exactly greedy decoding.
- Finished hypotheses are ranked by their length-normalized score
  ``log P(y | x) / lp(|y|)`` with GNMT's length penalty ``lp(n) = ((5 + n) / 6) ** α``
  (Wu et al., 2016, §7; ``translate.length_penalty`` is α; 0 ranks by log-probability alone).
  ``|y|`` counts the EOS.
- A sentence is done when no hypothesis is alive, when its best finished score can no longer
  be beaten (log-probabilities only fall, so an alive hypothesis can at best reach
  ``logp / lp(limit)``), or at its length limit ``max(min_length, ceil(ratio × source
  length))``, where the alive hypotheses are finished as they are (without EOS). A sentence
  that is done leaves the loop's tensors (its rows are gathered out), so later steps compute
  only the sentences still searched; the loop ends when none is left.
- Sampling (``sampling`` given) is the same loop with the candidate selection replaced: each of
  a sentence's ``beam`` rows is an independent sample, all alive from the first step, and each
  step draws one token per row from ``softmax(logits / T)`` (restricted to its ``topk`` most
  probable tokens unless ``topk`` is 0; ``seq2seq.sampling``) instead of taking the best
  extensions. A sample is scored by the model's own log-probability (untempered, unrestricted),
  as ``--score`` would score it; a sentence is done when all its samples have ended.
"""

from collections import namedtuple

import numpy as np
import tensorflow as tf

from seq2seq.sampling import hash_combine, sample_tokens, seed_key
from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID

NEG_INF = -1e9
BLOCK = 64  # logits per block of best_tokens' two-stage top-k

SearchResult = namedtuple("SearchResult", "tokens scores log_probs lengths attention")
SearchResult.__doc__ = """Hypotheses of a batch, best first for each sentence.

tokens: int32 [batch, beam, out_len], ``pieces + [EOS]`` (no EOS if the length limit cut it),
  padded with PAD_ID. scores: float32 [batch, beam], the length-normalized scores (NEG_INF for
  unused slots). log_probs: float32 [batch, beam], log P(y | x). lengths: int32 [batch, beam],
  tokens counting EOS. attention: float32 [batch, beam, out_len, src_len], the attention
  weights that produced each output token.
"""


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


def length_penalty(length, alpha):
    """GNMT's lp(n) = ((5 + n) / 6) ** α. length: int32 tensor -> float32 tensor of its shape."""
    return tf.pow((5.0 + tf.cast(length, tf.float32)) / 6.0, alpha)


def _tile(tensor, beam):
    """[batch, ...] -> [batch * beam, ...], each row repeated ``beam`` times."""
    return tf.repeat(tensor, beam, axis=0)


def _set_column(tensor, t, values):
    """tensor [batch, beam, T, ...] with position t set to values [batch, beam, ...]."""
    at_t = tf.reshape(tf.equal(tf.range(tf.shape(tensor)[2]), t), [1, 1, -1] + [1] * (len(tensor.shape) - 3))
    return tf.where(at_t, tf.expand_dims(values, 2), tensor)


def best_tokens(logits, k, block=BLOCK):
    """The k most probable tokens of each row and their log-probabilities.

    The same as ``tf.math.top_k(tf.nn.log_softmax(logits), k)`` up to rounding, but faster for a
    wide vocabulary: TensorFlow's CPU top-k scans every element of a row through its heap
    (docs/benchmarks.md has the timings). Here each row is cut into
    blocks of ``block`` logits; the k largest logits lie in the k blocks with the largest maxima
    (every other block's maximum is at most theirs), so only those k × block logits are searched.
    The log-probabilities are those of the k chosen tokens in the row's softmax (one fused op,
    faster than a log-sum-exp of separate ops), at least log of the smallest normal float32
    (a probability that underflows).

    Args:
      logits: float32 [rows, vocab] (the vocabulary size known statically).
      k: python int.
    Returns:
      (log_probs float32 [rows, k'], tokens int32 [rows, k']), best first, k' = min(k, vocab).
    """
    vocab = logits.shape[-1]
    k = min(k, vocab)
    blocks = -(-vocab // block)
    if blocks < 2 * k:  # a narrow vocabulary: one scan is as fast
        _, tokens = tf.math.top_k(logits, k)
    else:
        padded = logits if blocks * block == vocab else tf.pad(
            logits, [[0, 0], [0, blocks * block - vocab]], constant_values=-float("inf"))
        cut = tf.reshape(padded, [-1, blocks, block])
        block_max = tf.reduce_max(cut, axis=-1)  # [rows, blocks]
        _, chosen = tf.math.top_k(block_max, k)
        chosen = tf.sort(chosen, axis=-1)  # ascending, so that ties keep top_k's lowest-index order
        _, position = tf.math.top_k(tf.reshape(tf.gather(cut, chosen, batch_dims=1), [-1, k * block]), k)
        tokens = tf.gather(chosen, position // block, batch_dims=1) * block + position % block
    probabilities = tf.gather(tf.nn.softmax(logits), tokens, batch_dims=1)
    return tf.math.log(tf.maximum(probabilities, np.finfo(np.float32).tiny)), tokens


def beam_search(model, source, beam_size, alpha, max_length_ratio, min_length, n_best=1, keep_attention=True,
                sampling=None, seed=None, lines=None):
    """Batched beam search (see the module docstring).

    Args:
      model: a ``Seq2Seq`` or an ``Ensemble`` (anything with ``encode``, ``step_weights(output_multiple)``
        (what ``decode_step`` takes, made once before the time loop), ``decode_step`` (its ``beam``: the
        rows are groups of ``beam`` hypotheses, the memory one row per group), whose first output are the
        next token's logits or log-probabilities over the output vocabulary, [rows, output size rounded
        up to a multiple of ``output_multiple``, the extra columns −inf], the size static, and
        ``target_ids``, which maps output indices to target ids).
      source: int32 [batch, src_len], each row ``pieces + [EOS]`` padded with PAD_ID.
      beam_size: python int K ≥ 1.
      alpha: the length penalty α.
      n_best: python int ≤ beam_size: a sentence is done only once its ``n_best``-th best finished
        hypothesis can no longer be beaten, so that ``n_best`` hypotheses are always returned.
      keep_attention: python bool: keep the attention weights of every hypothesis. Their history is
        [batch, beam, out_len, src_len] floats, quadratic in the sentence length; without it
        ``SearchResult.attention`` is an empty [batch, beam, out_len, 0] tensor.
      sampling: None (beam search) or a ``Sampling``: ``beam_size`` independent samples per
        sentence (``n_best`` must then be ``beam_size``).
      seed: int64 scalar, the seed of the draws (with ``sampling``).
      lines: int32 [batch], the sources' line numbers (with ``sampling``): a sentence's samples
        depend on the seed and its line number only (``seq2seq.sampling``).
    Returns:
      a SearchResult with ``beam_size`` hypotheses per sentence, best first.
    """
    k = beam_size
    if sampling is not None and n_best != k:
        raise ValueError(f"sampling returns every sample: n_best must be the beam size {k}, got {n_best}")
    batch, src_len = tf.shape(source)[0], tf.shape(source)[1]
    limits = length_limits(source, max_length_ratio, min_length)  # [batch]
    max_steps = tf.reduce_max(limits)
    memory, state = model.encode(source)
    # Cast once, outside the time loop; the output size padded to whole blocks of best_tokens.
    step_weights = model.step_weights(BLOCK)
    kept_src_len = src_len if keep_attention else 0
    finished = {
        "tokens": tf.zeros([batch, k, max_steps], tf.int32),
        "attention": tf.zeros([batch, k, max_steps, kept_src_len]),
        "scores": tf.fill([batch, k], NEG_INF),
        "log_probs": tf.fill([batch, k], NEG_INF),
        "lengths": tf.zeros([batch, k], tf.int32),
    }
    # The sentences still searched ("live"), [live, ...], and their hypotheses' rows, [live * beam,
    # ...]: a sentence that is done leaves both (the step's cost follows the live sentences only),
    # ``index`` maps live sentences to their rows of ``finished``. The first hypothesis of each
    # sentence starts alive.
    live = {
        "index": tf.range(batch),
        "limits": limits,
        "logp": (tf.zeros([batch, k]) if sampling is not None else  # every sample starts alive
                 tf.tile(tf.concat([[0.0], tf.fill([k - 1], NEG_INF)], 0)[None], [batch, 1])),
        "open_slots": tf.fill([batch], k),
        "tokens": tf.zeros([batch, k, max_steps], tf.int32),
        "attention": tf.zeros([batch, k, max_steps, kept_src_len]),
        "memory": memory,
    }
    if sampling is not None:
        live["line"] = tf.convert_to_tensor(lines, tf.int32)
        key = seed_key(tf.convert_to_tensor(seed, tf.int64))
    rows = {"last_token": tf.fill([batch * k], BOS_ID),
            "state": tf.nest.map_structure(lambda x: _tile(x, k), state)}

    def not_done(t, live, rows, finished):
        return tf.size(live["index"]) > 0

    def body(t, live, rows, finished):
        n = tf.shape(live["index"])[0]
        logits, state, weights = model.decode_step(rows["last_token"], rows["state"], live["memory"], step_weights, k)
        weights = tf.reshape(tf.cast(weights, tf.float32), [n, k, src_len])
        # The sentence's k best extensions are among its hypotheses' own k best tokens: select
        # those first, then the k best of the k × k (closed slots have NEG_INF, never chosen).
        # Sampling draws one token per row instead: the k samples, sorted, are the k "best".
        with tf.name_scope("select"):  # the name profiles group by (seq2seq/profiling.py)
            if sampling is None:
                log_probs, tokens = best_tokens(logits, k)  # [n * k, k']
            else:
                keys = hash_combine(hash_combine(hash_combine(key, live["line"])[:, None], tf.range(k)[None]), t)
                log_probs, tokens = sample_tokens(logits, sampling, tf.reshape(keys, [-1]))  # [n * k, 1]
            tokens = model.target_ids(tokens)  # output indices -> target ids
        per_row = log_probs.shape[-1]
        candidates = tf.reshape(tf.reshape(live["logp"], [-1, 1]) + log_probs, [n, k * per_row])
        top_logp, top_index = tf.math.top_k(candidates, k)  # [n, k], best first
        parent = top_index // per_row
        token = tf.gather(tf.reshape(tokens, [n, k * per_row]), top_index, batch_dims=1)
        # Keep as many extensions as the sentence has open slots (beam size - finished so far).
        valid = (tf.range(k)[None, :] < live["open_slots"][:, None]) & (top_logp > NEG_INF / 2)
        at_limit = (t + 1 >= live["limits"])[:, None]
        finishing = valid & (tf.equal(token, EOS_ID) | at_limit)
        staying = valid & tf.logical_not(finishing)

        tokens = _set_column(tf.gather(live["tokens"], parent, batch_dims=1), t, token)
        attention = live["attention"]  # [n, k, max_steps, 0] without the attention history
        if keep_attention:
            attention = _set_column(tf.gather(live["attention"], parent, batch_dims=1), t,
                                    tf.gather(weights, parent, batch_dims=1))
        length = t + 1
        scores = tf.where(finishing, top_logp / length_penalty(length, alpha), NEG_INF)
        # Merge the newly finished into the live sentences' finished lists, best first (at most k
        # ever finish), and write those lists back.
        ours = {name: tf.gather(value, live["index"]) for name, value in finished.items()}
        merged_scores = tf.concat([ours["scores"], scores], axis=1)
        best_scores, order = tf.math.top_k(merged_scores, k)
        new = {"tokens": tokens, "attention": attention, "scores": scores,
               "log_probs": tf.where(finishing, top_logp, NEG_INF), "lengths": tf.fill([n, k], length)}
        ours = {name: tf.gather(tf.concat([ours[name], new[name]], axis=1), order, batch_dims=1) for name in ours}
        ours["scores"] = best_scores
        finished = {name: finished[name] if name == "attention" and not keep_attention else  # (empty)
                    tf.tensor_scatter_nd_update(finished[name], live["index"][:, None], ours[name])
                    for name in finished}

        alive_logp = tf.where(staying, top_logp, NEG_INF)
        best_alive = tf.reduce_max(alive_logp, axis=1)
        unbeatable = ours["scores"][:, n_best - 1] >= best_alive / length_penalty(live["limits"], alpha)
        done = tf.logical_not(tf.reduce_any(staying, axis=1)) | unbeatable | at_limit[:, 0]
        hypothesis_rows = tf.reshape(tf.range(n)[:, None] * k + parent, [-1])
        live = {**live, "logp": alive_logp, "tokens": tokens, "attention": attention,
                "open_slots": live["open_slots"] - tf.reduce_sum(tf.cast(finishing, tf.int32), axis=1)}
        rows = {"last_token": tf.reshape(token, [-1]),
                "state": tf.nest.map_structure(lambda x: tf.gather(x, hypothesis_rows), state)}

        def drop_done():
            keep = tf.cast(tf.where(tf.logical_not(done))[:, 0], tf.int32)  # [live'], in order
            keep_rows = tf.reshape(keep[:, None] * k + tf.range(k)[None, :], [-1])
            return (tf.nest.map_structure(lambda x: tf.gather(x, keep), live),
                    tf.nest.map_structure(lambda x: tf.gather(x, keep_rows), rows))

        live, rows = tf.cond(tf.reduce_any(done), drop_done, lambda: (live, rows))
        return t + 1, live, rows, finished

    def any_batch(x):
        return tf.TensorShape([None]).concatenate(x.shape[1:])

    _, _, _, finished = tf.while_loop(
        not_done, body, (tf.constant(0), live, rows, finished),
        shape_invariants=(tf.TensorShape([]), tf.nest.map_structure(any_batch, live),
                          tf.nest.map_structure(any_batch, rows), tf.nest.map_structure(lambda x: x.shape, finished)))
    # Trim to the longest hypothesis and blank everything past each hypothesis' length.
    out_len = tf.reduce_max(finished["lengths"])
    inside = tf.range(out_len)[None, None, :] < finished["lengths"][:, :, None]
    tokens = tf.where(inside, finished["tokens"][:, :, :out_len], PAD_ID)
    attention = tf.where(inside[..., None], finished["attention"][:, :, :out_len], 0.0)
    return SearchResult(tokens, finished["scores"], finished["log_probs"], finished["lengths"], attention)


class Searcher:
    """Compiled beam search (or sampling) for one model or an ensemble: ``searcher(source)`` ->
    SearchResult of tensors.

    One ``tf.function`` with a fixed input signature: any batch shape runs through one trace.
    With ``sampling``, ``searcher(source, seed, lines)`` takes the seed and the sources' line numbers.
    """

    def __init__(self, model, beam_size, length_penalty, max_length_ratio, min_length, n_best=1, attention=True,
                 sampling=None):
        if not 1 <= n_best <= beam_size:
            raise ValueError(f"n_best must be between 1 and the beam size {beam_size}, got {n_best}")
        self.model, self.sampling = model, sampling
        self.beam_size, self.alpha, self.n_best = int(beam_size), float(length_penalty), int(n_best)
        self.attention = bool(attention)
        self.max_length_ratio, self.min_length = float(max_length_ratio), int(min_length)
        signature = [tf.TensorSpec([None, None], tf.int32)]
        if sampling is not None:
            signature += [tf.TensorSpec([], tf.int64), tf.TensorSpec([None], tf.int32)]
        self._search = tf.function(self._run, input_signature=signature, autograph=False)

    def _run(self, source, seed=None, lines=None):
        return beam_search(self.model, source, self.beam_size, self.alpha, self.max_length_ratio,
                           self.min_length, self.n_best, keep_attention=self.attention, sampling=self.sampling,
                           seed=seed, lines=lines)

    def __call__(self, source, seed=0, lines=None):
        """source: int32 [batch, src_len] (numpy or tensor); with sampling, ``seed`` an int and
        ``lines`` the sources' line numbers (default 0, 1, ...; both unused by beam search) ->
        SearchResult."""
        source = tf.convert_to_tensor(source, tf.int32)
        if self.sampling is None:
            return self._search(source)
        lines = tf.range(tf.shape(source)[0]) if lines is None else tf.convert_to_tensor(lines, tf.int32)
        return self._search(source, tf.constant(seed, tf.int64), lines)
