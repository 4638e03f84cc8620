"""Parallel corpora to batches: check the files, encode, filter, bucket by length, batch by tokens.

A training example is a pair of int32 id vectors ``(source, target)``: ``source`` is
``pieces + [EOS]``, ``target`` is ``pieces + [EOS]``. Batches are padded with PAD_ID (0) to the
longest example in the batch; ``decoder_inputs`` turns a target batch into the decoder's input.

Batches are made in the tf.data graph: files are read (gzip too) and encoded a chunk of lines at
a time by tensorflow-text's SentencePiece op, with the ids of the Python tokenizer. With
``tokenizer.sampling_alpha`` set, training batches take a sampled segmentation of each sentence,
a new one each time it is read (subword regularization); a sampled side longer than
``training.max_length`` falls back to the best segmentation, so that an epoch keeps exactly the
pairs that the best segmentation keeps. ``encoded_pairs`` is the same encoding in Python (best
segmentation), streamed, for counting a corpus before training.
"""

import collections
import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from seq2seq import segmentation
from seq2seq.corpus import is_gzip
from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID

CHUNK_LINES = 2048  # lines encoded per SentencePiece call
PREFETCH_BATCHES = 4  # training batches prepared ahead of the step that needs them
# What Python's str.strip() removes (str.isspace), as an RE2 class: a line of these only is empty.
_BLANK = r"[\t\n\x0b\x0c\r\x1c-\x1f\x{85}\p{Z}]*"


@dataclass
class CorpusStats:
    """What happened to the lines of a corpus in one pass."""

    lines: int = 0
    pairs: int = 0
    empty: int = 0  # an empty or whitespace-only side: skipped
    too_long: int = 0  # more than max_length tokens on a side: skipped
    source_tokens: int = 0
    target_tokens: int = 0
    target_counts: np.ndarray | None = None  # each target id's count (estimate_batches), EOS left out
    notes: collections.Counter = field(default_factory=collections.Counter)  # see corpus.read_lines

    def describe(self):
        notes = "".join(f"; {count} {what}" for what, count in sorted(self.notes.items()))
        return (f"{self.pairs} pairs kept of {self.lines} lines ({self.empty} empty, {self.too_long} "
                f"longer than the length limit); {self.source_tokens} source and {self.target_tokens} "
                f"target tokens{notes}")


def encoded_pairs(corpus, tokenizer, max_length, stats=None):
    """Yields encoded ``(source_ids, target_ids)`` numpy pairs of a ``corpus.Corpus`` (best
    segmentation), skipping empty and too-long ones.

    Lengths count EOS. ``stats`` (a CorpusStats), if given, is updated as lines are read.
    """
    stats = stats if stats is not None else CorpusStats()
    pairs = corpus.pairs(stats.notes)
    while True:
        chunk = list(itertools.islice(pairs, CHUNK_LINES))
        if not chunk:
            return
        stats.lines += len(chunk)
        kept = [(s, t) for _, s, t in chunk if s.strip() and t.strip()]
        stats.empty += len(chunk) - len(kept)
        if not kept:
            continue
        sources = tokenizer.encode_source([s for s, _ in kept])
        targets = tokenizer.encode_target([t for _, t in kept])
        for source, target in zip(sources, targets):
            target = target + [EOS_ID]
            if len(source) > max_length or len(target) > max_length:
                stats.too_long += 1
                continue
            stats.pairs += 1
            stats.source_tokens += len(source)
            stats.target_tokens += len(target)
            yield np.asarray(source, np.int32), np.asarray(target, np.int32)


def _text_lines(path):
    """The lines of a text file (gzip if named .gz) as a dataset of strings, the ``\\n`` or
    ``\\r\\n`` ending removed (as ``corpus.read_lines`` does)."""
    return tf.data.TextLineDataset(path, compression_type="GZIP" if is_gzip(path) else "")


def _line_chunks(corpus):
    """Chunks of ``CHUNK_LINES`` aligned lines: a dataset of ``(sources, targets)``, string
    [chunk], in file order, the byte order mark of a file's first line removed."""
    if corpus.tsv:
        def columns(lines):
            parts = tf.strings.split(lines, "\t", maxsplit=1).to_tensor("", shape=[None, 2])
            return parts[:, 0], parts[:, 1]  # corpus.check made sure each line has one tab

        chunks = _text_lines(corpus.tsv).batch(CHUNK_LINES).map(columns)
    else:
        chunks = tf.data.Dataset.zip(_text_lines(corpus.source), _text_lines(corpus.target)).batch(CHUNK_LINES)

    def without_bom(index, sources, targets):
        def strip(lines):
            first = tf.strings.regex_replace(lines[:1], "^\ufeff", "")
            return tf.cond(index == 0, lambda: tf.concat([first, lines[1:]], 0), lambda: lines)

        return strip(sources), strip(targets)

    return chunks.enumerate().map(lambda index, chunk: without_bom(index, *chunk))


def encoded_dataset(corpus, tokenizer, max_length, sampling_alpha=0.0, nbest_size=-1, seed=None):
    """The encoded pairs of ``corpus`` in file order, as ``encoded_pairs`` gives them but in the
    graph: a dataset of ``(source [len], target [len])`` int32 vectors, each ending with EOS.

    ``sampling_alpha`` > 0: each side is a sampled segmentation (``nbest_size`` as in
    SentencePiece; ``seq2seq.segmentation``), a new one at each iteration, drawn from ``seed``
    where the sampler takes one (a unigram model with ``nbest_size`` 2 or more); a side whose
    sample is longer than ``max_length`` takes the best segmentation, so the pairs kept are the
    same.
    """
    best_source, best_target = tokenizer.in_graph()
    sampled = segmentation.samplers(tokenizer, sampling_alpha, nbest_size) if sampling_alpha > 0 else None

    def encode(lines, best, sampler, seed):
        """string [n] -> (int32 ragged [n, (pieces + EOS)], the best segmentation's lengths
        with EOS, int [n])."""
        ids = best.tokenize(lines)
        lengths = ids.row_lengths() + 1
        if sampler is not None:
            samples = sampler(lines, seed)
            n = tf.shape(lines)[0]
            use_sample = samples.row_lengths() + 1 <= max_length
            ids = tf.gather(tf.concat([samples, ids], 0), tf.where(use_sample, tf.range(n), tf.range(n) + n))
        eos = tf.fill([tf.shape(lines)[0], 1], tf.constant(EOS_ID, tf.int32))
        return tf.concat([ids, tf.RaggedTensor.from_tensor(eos, row_splits_dtype=ids.row_splits.dtype)], 1), lengths

    def chunk(seed, lines):
        sources, targets = lines
        blank = tf.strings.regex_full_match(sources, _BLANK) | tf.strings.regex_full_match(targets, _BLANK)
        sources, targets = tf.boolean_mask(sources, ~blank), tf.boolean_mask(targets, ~blank)
        source_ids, source_lengths = encode(sources, best_source, sampled and sampled[0], tf.stack([seed, 0]))
        target_ids, target_lengths = encode(targets, best_target, sampled and sampled[1], tf.stack([seed, 1]))
        keep = (source_lengths <= max_length) & (target_lengths <= max_length)
        return tf.ragged.boolean_mask(source_ids, keep), tf.ragged.boolean_mask(target_ids, keep)

    # One seed a chunk for the samplers, another sequence of them at each iteration.
    seeds = (tf.data.Dataset.random(seed, rerandomize_each_iteration=True) if sampled
             else tf.data.Dataset.from_tensors(tf.constant(0, tf.int64)).repeat())
    return tf.data.Dataset.zip(seeds, _line_chunks(corpus)).map(chunk).unbatch().map(
        lambda source, target: (tf.ensure_shape(source, [None]), tf.ensure_shape(target, [None])))


def bucket_boundaries(max_length):
    """Upper length bounds (exclusive) of the length buckets: about 10% apart, from 8 up."""
    boundaries, bound = [], 8
    while bound <= max_length:
        boundaries.append(bound)
        bound = max(bound + 4, int(bound * 1.1))
    return boundaries


def bucket_batch_sizes(boundaries, batch_tokens, max_length):
    """Sentences per batch for each bucket so that a padded batch holds at most ``batch_tokens``."""
    longest = [b - 1 for b in boundaries] + [max_length]
    return [max(1, batch_tokens // n) for n in longest]


def _example_length(source, target):
    return tf.maximum(tf.shape(source)[0], tf.shape(target)[0])


def _batched(pairs, training_config, shuffle_seed=None):
    """``pairs`` (a dataset of ``(source, target)`` vectors) shuffled if ``shuffle_seed`` is
    given, bucketed by length, batched by tokens."""
    cfg = training_config
    if shuffle_seed is not None:
        pairs = pairs.shuffle(cfg.shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
    boundaries = bucket_boundaries(cfg.max_length)
    # Without tf.data's autotuning: its optimization thread does not wake up when an iterator is
    # deleted, so deleting an epoch's iterator waited out that thread's sleep (up to 60 s; in
    # Multi30k trainings a third of the epochs ended with such a stall). Nothing here has
    # parallelism to tune.
    options = tf.data.Options()
    options.autotune.enabled = False
    # Under multi_worker, every worker reads the whole corpus and keeps its share of the batches
    # (as when the pairs came from Python): sharding by file would give the source file to one
    # worker and the target file to another.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return pairs.bucket_by_sequence_length(
        _example_length, boundaries, bucket_batch_sizes(boundaries, cfg.batch_tokens, cfg.max_length),
        padded_shapes=([None], [None]), padding_values=(PAD_ID, PAD_ID)).with_options(options)


def training_dataset(corpus, tokenizer, training_config, epoch, tokenizer_config=None):
    """One epoch of shuffled, length-bucketed, token-batched ``(source, target)`` batches of a
    ``corpus.Corpus``.

    Returns a tf.data.Dataset of ``(source [batch, src_len], target [batch, tgt_len])`` int32
    batches padded with PAD_ID. Shuffling, and the sampled segmentations where they take a seed,
    are seeded by ``training.seed`` and ``epoch``, so a resumed run sees the same batches for
    the same epoch. ``tokenizer_config``'s ``sampling_alpha`` and ``nbest_size``, if given,
    sample the segmentations.
    """
    sampling = (tokenizer_config.sampling_alpha, tokenizer_config.nbest_size) if tokenizer_config else (0.0, -1)
    seed = training_config.seed + epoch
    pairs = encoded_dataset(corpus, tokenizer, training_config.max_length, *sampling, seed=seed)
    return _batched(pairs, training_config, shuffle_seed=seed).prefetch(PREFETCH_BATCHES)


def estimate_batches(corpus, tokenizer, training_config, tokenizer_config=None):
    """Counts the pairs a training epoch keeps and the batches it makes; returns (stats, batches).

    The stats are those of the best segmentation. With ``tokenizer_config.sampling_alpha`` set,
    the batches are counted on one pass of sampled segmentations (longer ones make more
    batches; each epoch's count differs a little from it).
    """
    cfg = training_config
    boundaries = bucket_boundaries(cfg.max_length)
    sizes = bucket_batch_sizes(boundaries, cfg.batch_tokens, cfg.max_length)
    per_bucket = [0] * len(sizes)
    stats = CorpusStats(target_counts=np.zeros(tokenizer.target_vocab_size, np.int64))
    for source, target in encoded_pairs(corpus, tokenizer, cfg.max_length, stats):
        length = max(len(source), len(target))
        per_bucket[sum(length >= b for b in boundaries)] += 1
        np.add.at(stats.target_counts, target[:-1], 1)
    if tokenizer_config is not None and tokenizer_config.sampling_alpha > 0 and stats.pairs:
        pairs = encoded_dataset(corpus, tokenizer, cfg.max_length, tokenizer_config.sampling_alpha,
                                tokenizer_config.nbest_size, seed=cfg.seed)
        return stats, int(_batched(pairs, cfg).reduce(0, lambda count, _: count + 1))
    return stats, sum(math.ceil(n / size) for n, size in zip(per_bucket, sizes))


def evaluation_batches(corpus, tokenizer, training_config):
    """Validation batches for the loss: the training batches of the best segmentation without
    shuffling (the pairs that training skips are skipped here too), computed once.

    Returns a list of ``(source, target)`` padded int32 tensors.
    """
    return list(_batched(encoded_dataset(corpus, tokenizer, training_config.max_length), training_config))


def pad(sequences, length=None):
    """Pads id lists with PAD_ID into an int32 array [len(sequences), length or longest]."""
    length = length or max((len(s) for s in sequences), default=0)
    out = np.full((len(sequences), length), PAD_ID, np.int32)
    for i, seq in enumerate(sequences):
        out[i, : len(seq)] = seq[:length]
    return out


def decoder_inputs(target):
    """Teacher-forcing decoder inputs: ``[BOS] + target[:-1]`` per row.

    Args:
      target: int32 [batch, tgt_len], pieces + EOS, padded with PAD_ID.
    Returns:
      int32 [batch, tgt_len]. Positions whose target is padding are masked by the loss.
    """
    bos = tf.fill([tf.shape(target)[0], 1], tf.constant(BOS_ID, target.dtype))
    return tf.concat([bos, target[:, :-1]], axis=1)
