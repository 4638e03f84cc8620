"""Parallel corpora to batches: check the files, encode, filter, bucket by length, batch by tokens.

A training example is a pair of int32 id vectors ``(source, target)``: ``source`` is
``pieces + [EOS]``, ``target`` is ``pieces + [EOS]``. Batches are padded with PAD_ID (0) to the
longest example in the batch; ``decoder_inputs`` turns a target batch into the decoder's input.
Files are streamed (never held in memory whole) and encoded in chunks with SentencePiece.
"""

import collections
import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from seq2seq.corpus import read_parallel
from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID

CHUNK_LINES = 2048  # lines encoded per SentencePiece call
PREFETCH_BATCHES = 4  # training batches prepared ahead of the step that needs them


@dataclass
class CorpusStats:
    """What happened to the lines of a corpus in one pass."""

    lines: int = 0
    pairs: int = 0
    empty: int = 0  # an empty or whitespace-only side: skipped
    too_long: int = 0  # more than max_length tokens on a side: skipped
    source_tokens: int = 0
    target_tokens: int = 0
    notes: collections.Counter = field(default_factory=collections.Counter)  # see corpus.read_lines

    def describe(self):
        notes = "".join(f"; {count} {what}" for what, count in sorted(self.notes.items()))
        return (f"{self.pairs} pairs kept of {self.lines} lines ({self.empty} empty, {self.too_long} "
                f"longer than the length limit); {self.source_tokens} source and {self.target_tokens} "
                f"target tokens{notes}")


def encoded_pairs(source_path, target_path, tokenizer, max_length, stats=None):
    """Yields encoded ``(source_ids, target_ids)`` numpy pairs, skipping empty and too-long ones.

    Lengths count EOS. ``stats`` (a CorpusStats), if given, is updated as lines are read.
    """
    stats = stats if stats is not None else CorpusStats()
    pairs = read_parallel(source_path, target_path, stats.notes)
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


def _batched_pairs(source_path, target_path, tokenizer, training_config, stats, shuffle_seed=None):
    """Encoded pairs (shuffled if ``shuffle_seed`` is given), bucketed by length, batched by tokens."""
    cfg = training_config

    def chunks():
        # Pairs cross into TensorFlow a chunk at a time (flat ids and lengths), unbatched in the
        # graph: one Python call per pair made refilling the shuffle buffer at each epoch's start
        # a stall of seconds.
        pairs = encoded_pairs(source_path, target_path, tokenizer, cfg.max_length, stats)
        while chunk := list(itertools.islice(pairs, CHUNK_LINES)):
            sources, targets = zip(*chunk)
            yield (np.concatenate(sources), np.array([len(x) for x in sources], np.int32),
                   np.concatenate(targets), np.array([len(x) for x in targets], np.int32))

    flat = (tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32))
    dataset = tf.data.Dataset.from_generator(chunks, output_signature=flat + flat).map(
        lambda source_ids, source_lengths, target_ids, target_lengths: (
            tf.RaggedTensor.from_row_lengths(source_ids, source_lengths, validate=False),
            tf.RaggedTensor.from_row_lengths(target_ids, target_lengths, validate=False))).unbatch().map(
        lambda source, target: (tf.ensure_shape(source, [None]), tf.ensure_shape(target, [None])))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(cfg.shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
    boundaries = bucket_boundaries(cfg.max_length)
    # Without tf.data's autotuning: its optimization thread does not wake up when an iterator is
    # deleted, so deleting an epoch's iterator waited out that thread's sleep (up to 60 s; in
    # Multi30k trainings a third of the epochs ended with such a stall). Nothing here has
    # parallelism to tune.
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.bucket_by_sequence_length(
        _example_length, boundaries, bucket_batch_sizes(boundaries, cfg.batch_tokens, cfg.max_length),
        padded_shapes=([None], [None]), padding_values=(PAD_ID, PAD_ID)).with_options(options)


def training_dataset(source_path, target_path, tokenizer, training_config, epoch, stats=None):
    """One epoch of shuffled, length-bucketed, token-batched ``(source, target)`` batches.

    Returns a tf.data.Dataset of ``(source [batch, src_len], target [batch, tgt_len])`` int32
    batches padded with PAD_ID. Shuffling is seeded by ``training.seed`` and ``epoch``, so a
    resumed run sees the same order for the same epoch.
    """
    return _batched_pairs(source_path, target_path, tokenizer, training_config, stats,
                          shuffle_seed=training_config.seed + epoch).prefetch(PREFETCH_BATCHES)


def estimate_batches(source_path, target_path, tokenizer, training_config):
    """Counts the pairs a training epoch keeps and the batches it makes; returns (stats, batches)."""
    cfg = training_config
    boundaries = bucket_boundaries(cfg.max_length)
    sizes = bucket_batch_sizes(boundaries, cfg.batch_tokens, cfg.max_length)
    per_bucket = [0] * len(sizes)
    stats = CorpusStats()
    for source, target in encoded_pairs(source_path, target_path, tokenizer, cfg.max_length, stats):
        length = max(len(source), len(target))
        per_bucket[sum(length >= b for b in boundaries)] += 1
    return stats, sum(math.ceil(n / size) for n, size in zip(per_bucket, sizes))


def evaluation_batches(source_path, target_path, tokenizer, training_config):
    """Validation batches for the loss: the training batches without shuffling (the pairs that
    training skips are skipped here too), computed once.

    Returns a list of ``(source, target)`` padded int32 tensors.
    """
    return list(_batched_pairs(source_path, target_path, tokenizer, training_config, CorpusStats()))


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
