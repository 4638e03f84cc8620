"""Where a training step's time goes: ``python -m seq2seq.bench --profile``.

Times, on the same real batches of the reference config, a training step cut after each of its
parts, each part with its backward pass: the encoder; the decoder up to the attentional vectors
(the recurrence with input feeding and attention); the output layer, softmax and loss; the
gradient clipping and Adam update. A part's cost is the difference between two consecutive
cuts. The input pipeline is timed on its own (batches produced per second, once its shuffle buffer is full), and the output
layer is also timed as it was before it skipped padding (every position, one-hot
Keras cross-entropy), for the record of that optimization in docs/benchmarks.md.

A beam search's time (``profile_search``) is read from TensorFlow's profiler instead, its ops'
self time grouped by the name scopes they run under (``SEARCH_GROUPS``): the search loop's
parts cannot be cut apart like the training step's.
"""

import glob
import json
import os
import statistics
import tempfile
import time

import keras
import tensorflow as tf

from seq2seq import vocabulary
from seq2seq.config import load_config
from seq2seq.corpus import corpus
from seq2seq.dataset import decoder_inputs, estimate_batches, training_dataset
from seq2seq.model import Seq2Seq
from seq2seq.tokenizer import PAD_ID, Tokenizer
from seq2seq.optimization import FusedAdam, sequence_loss


def _dense_loss(model, source, target, label_smoothing):
    """The loss as computed before padding was skipped: logits at every position, one-hot targets."""
    logits = model((source, decoder_inputs(target)), training=True)
    loss_fn = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing,
                                                   reduction=None)
    mask = tf.cast(tf.not_equal(target, PAD_ID), tf.float32)
    return tf.reduce_sum(loss_fn(tf.one_hot(model.output_index(target), tf.shape(logits)[-1]), logits) * mask)


def _cuts(model, optimizer, config):
    """name -> tf.function(source, target) running the step up to and including that part."""
    smoothing, clip = config.training.label_smoothing, config.training.clip_norm
    variables = model.trainable_variables

    def backward(loss_of):
        def run(source, target):
            with tf.GradientTape() as tape:
                loss = loss_of(source, target)
            gradients = tape.gradient(loss, variables)
            return loss, [g for g in gradients if g is not None]
        return run

    encoder = backward(lambda s, t: tf.reduce_sum(model.encode(s, training=True)[0]["keys"]))
    decoder = backward(lambda s, t: tf.reduce_sum(model.attentional((s, decoder_inputs(t)), training=True)))
    output = backward(lambda s, t: sequence_loss(model, s, t, True, smoothing)[0])
    dense = backward(lambda s, t: _dense_loss(model, s, t, smoothing))

    def update(source, target):
        loss, gradients = output(source, target)  # every variable is connected to the loss
        gradients, _ = tf.clip_by_global_norm(gradients, clip)
        optimizer.apply_gradients(zip(gradients, variables))
        return loss

    signature = [tf.TensorSpec([None, None], tf.int32)] * 2
    return {name: tf.function(fn, input_signature=signature) for name, fn in (
        ("encoder", encoder), ("decoder", decoder), ("output", output), ("update", update),
        ("dense_output", dense))}


def profile_step(work_dir, config_path, num_batches=40, repeats=7, log=print):
    """Times the parts of a training step; returns a dict of figures (see the module docstring).

    The SentencePiece model is trained into ``work_dir``; the model is built fresh from
    ``config_path`` (its weights' values do not change the time of a step).
    """
    config = load_config(config_path)
    log("profile: training SentencePiece")
    tokenizer = Tokenizer.train(work_dir, config.data, config.tokenizer, config.training.seed)
    dataset = training_dataset(corpus(config.data, "train"), tokenizer, config.training, 0, config.tokenizer)
    batches = []
    for batch in dataset.take(num_batches + 5):  # the first batches wait for the shuffle buffer
        batches.append(batch)
        if len(batches) == 5:
            started = time.perf_counter()
    pipeline_seconds = time.perf_counter() - started
    warmup, batches = batches[:5], batches[5:]
    tokens = sum(int(tf.reduce_sum(tf.cast(t != PAD_ID, tf.int32))) for _, t in batches)
    positions = sum(int(tf.size(t)) for _, t in batches)

    pieces = None
    if config.model.output_vocabulary == "observed":
        stats, _ = estimate_batches(corpus(config.data, "train"), tokenizer, config.training)
        pieces = vocabulary.observed(stats.target_counts)
    model = Seq2Seq.from_config_section(config.model, tokenizer.source_vocab_size, tokenizer.target_vocab_size,
                                        pieces)
    optimizer = FusedAdam(config.training.learning_rate)
    optimizer.build(model.trainable_variables)
    cuts = _cuts(model, optimizer, config)
    for name, fn in cuts.items():
        log(f"profile: tracing {name}")
        for source, target in warmup:
            fn(source, target)
    runs = {name: [] for name in cuts}
    for repeat in range(repeats):  # the cuts take turns, so that a slow spell of the machine hits all
        log(f"profile: round {repeat + 1} of {repeats}")
        for name, fn in cuts.items():
            begin = time.perf_counter()
            for source, target in batches:
                result = fn(source, target)
            [x.numpy() for x in tf.nest.flatten(result, expand_composites=True)]
            runs[name].append(time.perf_counter() - begin)
    seconds = {name: statistics.median(values) for name, values in runs.items()}
    per_step = {name: 1000 * value / len(batches) for name, value in seconds.items()}
    parts = {
        "encoder (embeddings, bidirectional GRU, key projection)": per_step["encoder"],
        "decoder (input-feeding GRU steps, attention, combine)": per_step["decoder"] - per_step["encoder"],
        "output layer, softmax and loss (real tokens only)": per_step["output"] - per_step["decoder"],
        "gradient clipping and Adam update": per_step["update"] - per_step["output"],
    }
    return {
        "batches": len(batches), "target_tokens": tokens, "target_padding_fraction": 1 - tokens / positions,
        "input_pipeline_batches_per_sec": num_batches / pipeline_seconds,
        "step_ms": per_step["update"], "step_target_tokens_per_sec": tokens / seconds["update"],
        "parts_ms": parts,
        "output_every_position_one_hot_ms": per_step["dense_output"] - per_step["decoder"],
    }


def print_profile(figures):
    step = figures["step_ms"]
    print(f"{figures['batches']} batches of the reference config, {figures['target_tokens']:,} target tokens "
          f"({figures['target_padding_fraction']:.1%} of target positions are padding)")
    print("| part (forward and backward) | ms a step | share |\n| --- | --- | --- |")
    for name, ms in figures["parts_ms"].items():
        print(f"| {name} | {ms:.1f} | {ms / step:.0%} |")
    print(f"| whole step | {step:.1f} | 100% |")
    print(f"step without logging or the input pipeline: {figures['step_target_tokens_per_sec']:,.0f} target tokens/s; "
          f"input pipeline alone: {figures['input_pipeline_batches_per_sec']:.0f} batches/s")
    print(f"output layer, softmax and loss the old way (every position, one-hot targets): "
          f"{figures['output_every_position_one_hot_ms']:.1f} ms a step")


# Where a beam step's time goes: the search's ops grouped by the name scope they run under, from
# TensorFlow's profiler. Checked in order; the first group whose fragment is in an op's name wins.
SEARCH_GROUPS = (
    ("encoder (once a batch: embeddings, bidirectional GRU, key projection)", ("encoder", "key_projection")),
    ("output layer (matmul and bias)", ("output_projection", "tied_output")),
    ("token selection (log-sum-exp, best tokens of each hypothesis)", ("/select/",)),
    ("attention (query, scores, softmax, context)", ("attention",)),
    ("attentional vector (combine)", ("combine",)),
    ("recurrent step (gates, input feed)", ("recurrent_step", "input_feed", "embedding")),
    ("beam bookkeeping (the k best of k × k, reordering, finished hypotheses)", ("while/",)),
)


def search_op_groups(op_stats):
    """Sums the self time of profiled ops by ``SEARCH_GROUPS``.

    Args:
      op_stats: list of dicts with ``operation`` (the op's name), ``type`` and ``total_self_time``
        (µs), as TensorFlow's profiler's ``framework_op_stats`` tool reports them.
    Returns:
      dict: group name -> ms, plus ``other`` (set-up outside the loop) and ``idle`` (threads waiting).
    """
    groups = {name: 0.0 for name, _ in SEARCH_GROUPS}
    groups.update(other=0.0, idle=0.0)
    for op in op_stats:
        ms = op["total_self_time"] / 1000
        if op["type"] == "IDLE":
            groups["idle"] += ms
            continue
        group = next((name for name, fragments in SEARCH_GROUPS if any(f in op["operation"] for f in fragments)),
                     "other")
        groups[group] += ms
    return groups


def profile_search(model_dir, lines, beam_size=5, log=print):
    """Translates ``lines`` with ``model_dir``'s model under TensorFlow's profiler (after a
    warm-up batch); returns the translation's seconds, its steps' count and ``search_op_groups``."""
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as profiler_plugin

    from seq2seq.model_dir import load_model
    from seq2seq.translate import Translator

    config, tokenizer, model = load_model(model_dir)
    translator = Translator(model, tokenizer, config.translate, beam_size=beam_size)
    translator.warm_up()
    translator.translate(lines[:64])
    with tempfile.TemporaryDirectory(prefix="seq2seq-profile-search-") as logdir:
        log(f"profile: beam {beam_size}, {len(lines)} lines under the profiler")
        tf.profiler.experimental.start(logdir)
        started = time.perf_counter()
        outputs = translator.translate(lines)
        seconds = time.perf_counter() - started
        tf.profiler.experimental.stop()
        [path] = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        data, ok = profiler_plugin.xspace_to_tools_data([path], "framework_op_stats", {})
    if not ok:
        raise RuntimeError("TensorFlow's profiler gave no op statistics")
    table = json.loads(data)[0]
    columns = [column["id"] for column in table["cols"]]
    ops = [dict(zip(columns, [cell.get("v") if cell else None for cell in row["c"]])) for row in table["rows"]]
    return {"lines": len(lines), "beam_size": beam_size, "seconds": seconds,
            "output_words": sum(len(line.split()) for line in outputs), "groups_ms": search_op_groups(ops)}


def print_search_profile(figures):
    groups = figures["groups_ms"]
    busy = sum(ms for name, ms in groups.items() if name != "idle")
    print(f"beam {figures['beam_size']}, {figures['lines']:,} lines in {figures['seconds']:.2f} s "
          f"({figures['output_words']:,} output words); ops' self time, summed over threads:")
    print("| part | ms | share of the ops' time |\n| --- | --- | --- |")
    for name, ms in groups.items():
        if name != "idle":
            print(f"| {name} | {ms:.1f} | {ms / busy:.0%} |")
    print(f"| threads idle (waiting for the next op) | {groups['idle']:.1f} | |")
