"""Translation with a trained toy model: beam search against an independent greedy decoder."""

import numpy as np
import pytest
import tensorflow as tf

from seq2seq.dataset import pad
from seq2seq.model_dir import load_model
from seq2seq.search import length_limits
from seq2seq.tokenizer import BOS_ID, EOS_ID
from seq2seq.translate import Translator


@pytest.fixture(scope="module")
def toy_model(trained_toy):
    return load_model(trained_toy)


@pytest.fixture(scope="module")
def test_sources(toy_data):
    return open(f"{toy_data}/test.src").read().splitlines()


def reference_greedy(model, tokenizer, lines, config):
    """Step-by-step argmax decoding of a padded batch in eager Python, each row stopping at its
    EOS or its length limit: the oracle for beam size 1."""
    source = tf.constant(pad(tokenizer.encode_source(lines)))
    limits = length_limits(source, config.max_length_ratio, config.min_output_length).numpy()
    memory, state = model.encode(source)
    token, outputs = tf.fill([len(lines)], BOS_ID), [[] for _ in lines]
    for t in range(int(limits.max())):
        logits, state, _ = model.decode_step(token, state, memory)
        token = tf.argmax(logits, axis=-1, output_type=tf.int32)
        for output, limit, value in zip(outputs, limits, token.numpy()):
            if t < limit and EOS_ID not in output:
                output.append(int(value))
    return tokenizer.decode_target(outputs)


def test_beam_size_one_equals_greedy_on_every_toy_sentence(toy_model, test_sources):
    config, tokenizer, model = toy_model
    beam1 = Translator(model, tokenizer, config.translate, beam_size=1).translate(test_sources, batch_size=64)
    assert beam1 == reference_greedy(model, tokenizer, test_sources, config.translate)


def test_best_beam_hypothesis_never_scores_below_greedy(toy_model, test_sources):
    config, tokenizer, model = toy_model
    greedy = Translator(model, tokenizer, config.translate, beam_size=1).hypotheses(test_sources)
    beam = Translator(model, tokenizer, config.translate, beam_size=5).hypotheses(test_sources)
    for greedy_best, beam_best in zip((g[0] for g in greedy), (b[0] for b in beam)):
        assert beam_best.score >= greedy_best.score - 1e-4


def test_n_best_lists_are_sorted_and_distinct(toy_model, test_sources):
    config, tokenizer, model = toy_model
    lists = Translator(model, tokenizer, config.translate, beam_size=5, n_best=4).hypotheses(test_sources[:50])
    for hypotheses in lists:
        texts, scores = [h.text for h in hypotheses], [h.score for h in hypotheses]
        assert len(hypotheses) == 4 and len(set(texts)) == 4
        assert list(scores) == sorted(scores, reverse=True)


@pytest.mark.parametrize("beam_size", [1, 4])
def test_output_order_is_input_order_whatever_the_batching(toy_model, test_sources, beam_size):
    config, tokenizer, model = toy_model
    translator = Translator(model, tokenizer, config.translate, beam_size=beam_size)
    lines = test_sources[:40]
    one_by_one = [translator.translate([line])[0] for line in lines]
    assert translator.translate(lines, batch_size=7) == one_by_one
    assert translator.translate(lines[::-1], batch_size=64) == one_by_one[::-1]


def test_empty_and_very_long_lines_each_get_one_output(toy_model):
    config, tokenizer, model = toy_model
    long_line = " ".join(f"s{i % 20}" for i in range(200))
    lines = ["", long_line, "   ", "s1 s2 s3", long_line, ""]
    outputs = Translator(model, tokenizer, config.translate, beam_size=3).translate(lines, batch_size=2)
    assert len(outputs) == len(lines)
    assert outputs[0] == outputs[2] == outputs[5] == ""
    assert outputs[1] == outputs[4] and 0 < len(outputs[1].split()) <= 2 * 201
    assert outputs[3]
    assert np.all([isinstance(o, str) for o in outputs])


def test_lines_over_the_input_limit_are_cut_and_reported(toy_model):
    config, tokenizer, model = toy_model
    limit = config.translate.max_input_length
    words = [f"s{i % 20}" for i in range(limit + 30)]
    translator = Translator(model, tokenizer, config.translate, beam_size=2)
    ids, truncated = translator.encode([" ".join(words), "s1 s2", "\x00\x01"])
    assert truncated == [0]
    assert len(ids[0]) == limit and ids[0][-1] == EOS_ID and ids[0][:-1] == ids[0][: limit - 1]
    # Truncation keeps the beginning: the same as translating the first limit - 1 words.
    cut = " ".join(words[: limit - 1])
    assert translator.translate([" ".join(words)]) == translator.translate([cut])
    reported = []
    outputs = translator.translate_stream([["s1", " ".join(words)], ["", " ".join(words)]], lambda i, h: None,
                                          on_truncate=reported.append)
    assert reported == [1, 3] and len(outputs) == 4


def test_search_without_attention_history_finds_the_same_translations(toy_model, test_sources):
    config, tokenizer, model = toy_model
    translator = Translator(model, tokenizer, config.translate, beam_size=3, n_best=2)
    with_attention = translator.hypotheses(test_sources[:50], attention=True)
    without = translator.hypotheses(test_sources[:50])
    assert [[h.text for h in hyps] for hyps in with_attention] == [[h.text for h in hyps] for hyps in without]
    assert [[h.score for h in hyps] for hyps in with_attention] == [[h.score for h in hyps] for hyps in without]
