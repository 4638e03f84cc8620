"""Ensembles, scoring given translations and sampling, with the trained toy model."""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from conftest import assert_one_line_error, chi_square, chi_square_999, run_main
from seq2seq.dataset import pad
from seq2seq.ensemble import Ensemble
from seq2seq.model import Seq2Seq
from seq2seq.model_dir import load_model
from seq2seq.sampling import Sampling
from seq2seq.search import Searcher, length_penalty
from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID

LINES = 30  # test sentences per command-line run


@pytest.fixture(scope="module")
def toy_model(trained_toy):
    return load_model(trained_toy)


@pytest.fixture(scope="module")
def files(toy_data, tmp_path_factory):
    """The first LINES test sources and references, and targets that are wrong translations
    (each reference paired with another sentence's source), as files."""
    folder = tmp_path_factory.mktemp("decoding")
    sources = open(os.path.join(toy_data, "test.src"), encoding="utf-8").read().splitlines()[:LINES]
    references = open(os.path.join(toy_data, "test.tgt"), encoding="utf-8").read().splitlines()[:LINES]
    paths = {}
    for name, lines in (("src", sources), ("ref", references), ("wrong", references[1:] + references[:1])):
        paths[name] = str(folder / name)
        with open(paths[name], "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)
    return paths


def translate(*args, stdin=None):
    result = run_main("translate.py", *args, stdin=stdin)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def scored(*args):
    return np.array([[float(x) for x in line.split("\t")] for line in translate(*args)])


# Ensembles.

def test_ensemble_mixes_the_members_probabilities():
    """Each step's output is log(Σ w_i p_i), the attention the weighted mean; the teacher-forced
    call agrees; a weight of 0 leaves the other member alone."""
    models = [Seq2Seq(30, 25, embedding_dim=8, units=8) for _ in range(2)]  # initialized differently
    for model in models:
        model.build_weights()
    source, token = tf.constant([[5, 6, EOS_ID], [7, EOS_ID, 0]]), tf.constant([BOS_ID, BOS_ID])
    ensemble = Ensemble(models, [1.0, 3.0])
    memory, state = ensemble.encode(source)
    mixed, _, attention = ensemble.decode_step(token, state, memory)
    steps = []
    for model in models:
        model_memory, model_state = model.encode(source)
        steps.append(model.decode_step(token, model_state, model_memory))
    assert not np.allclose(steps[0][0].numpy(), steps[1][0].numpy(), atol=1e-3)
    probs = [tf.nn.softmax(logits).numpy() for logits, _, _ in steps]
    np.testing.assert_allclose(mixed.numpy(), np.log(0.25 * probs[0] + 0.75 * probs[1]), atol=1e-5)
    np.testing.assert_allclose(attention.numpy(), 0.25 * steps[0][2].numpy() + 0.75 * steps[1][2].numpy(), atol=1e-6)
    forced = ensemble((source, tf.constant([[BOS_ID, 4], [BOS_ID, 9]])))
    np.testing.assert_allclose(forced.numpy()[:, 0], mixed.numpy(), atol=1e-5)
    alone = Ensemble(models, [0.0, 2.0]).decode_step(token, state, memory)[0]
    np.testing.assert_allclose(alone.numpy(), tf.nn.log_softmax(steps[1][0]).numpy(), atol=1e-5)


def test_ensemble_of_a_model_with_itself_translates_as_the_model(trained_toy, files):
    options = ["--input", files["src"], "--beam-size", "3", "--n-best", "3", "--alignments"]
    alone = [line.split(" ||| ") for line in translate("--model", trained_toy, *options)]
    together = [line.split(" ||| ") for line in translate("--model", trained_toy, "--model", trained_toy,
                                                           "--weights", "1", "3", *options)]
    assert len(alone) == 3 * LINES
    # The same hypotheses, alignments and order; the scores up to the last printed digit (the
    # mixture's log-sum-exp rounds differently from the model's own normalization).
    assert [(i, text, links) for i, text, _, links in together] == [(i, text, links) for i, text, _, links in alone]
    np.testing.assert_allclose([float(h[2]) for h in together], [float(h[2]) for h in alone], atol=1.5e-4)


@pytest.fixture(scope="module")
def other_tokenizer_model(trained_toy, tmp_path_factory):
    """A copy of the toy model directory whose SentencePiece model was trained on other text."""
    import sentencepiece as spm

    folder = tmp_path_factory.mktemp("other")
    copy = str(folder / "model")
    shutil.copytree(trained_toy, copy)
    text = folder / "text"
    text.write_text("".join(f"w{i} w{(i * 7) % 30} w{(i * 3) % 30}\n" for i in range(300)), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(folder / "spm"), vocab_size=40,
                                   model_type="word", pad_id=0, unk_id=1, bos_id=2, eos_id=3, minloglevel=2)
    shutil.copy(folder / "spm.model", os.path.join(copy, "spm.model"))
    return copy


def test_ensemble_members_must_share_their_sentencepiece_models(trained_toy, other_tokenizer_model, tmp_path):
    result = run_main("translate.py", "--model", trained_toy, "--model", other_tokenizer_model, stdin="s1\n")
    assert_one_line_error(result, trained_toy, other_tokenizer_model, "different source SentencePiece models")
    result = run_main("export", "--model", trained_toy, "--model", other_tokenizer_model, "--output", str(tmp_path))
    assert_one_line_error(result, trained_toy, other_tokenizer_model, "SentencePiece")
    result = run_main("export", "--model", trained_toy, "--model", trained_toy, "--weights", "1",
                      "--output", str(tmp_path))
    assert_one_line_error(result, "--weights gives 1 weights for 2 models")
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("args, fragments", [
    (["--weights", "1"], ["--weights gives 1 weights for 2 models"]),
    (["--weights", "1", "-1"], ["--weights must be non-negative"]),
    (["--weights", "0", "0"], ["not all 0"]),
    (["--sampling-topk", "5", "--beam-size", "3"], ["--beam-size must be 1, got 3"]),
    (["--sampling-temperature", "0"], ["--sampling-temperature must be positive"]),
    (["--sampling-topk", "-1"], ["--sampling-topk must be non-negative"]),
    (["--seed", "3"], ["--seed applies to sampling only"]),
    (["--score", "REF", "--n-best", "2"], ["--score", "--n-best does not apply"]),
    (["--score", "REF", "--sampling-topk", "0"], ["--sampling-topk does not apply"]),
])
def test_bad_decoding_options_give_one_line(trained_toy, files, args, fragments):
    args = [files["ref"] if arg == "REF" else arg for arg in args]
    result = run_main("translate.py", "--model", trained_toy, "--model", trained_toy, *args, stdin="s1\n")
    assert_one_line_error(result, *fragments)
    assert result.stdout == ""


# Scoring.

def reference_log_prob(model, tokenizer, source_line, target_line):
    """log P(target | source), one eager decoder step at a time: the oracle for ``--score``."""
    source = tf.constant(pad(tokenizer.encode_source([source_line])))
    memory, state = model.encode(source)
    token, total = tf.constant([BOS_ID]), 0.0
    for wanted in tokenizer.encode_target([target_line])[0] + [EOS_ID]:
        logits, state, _ = model.decode_step(token, state, memory)
        total += float(tf.nn.log_softmax(logits)[0, wanted])
        token = tf.constant([wanted])
    return total


def test_score_is_the_teacher_forced_log_probability(trained_toy, toy_model, files):
    config, tokenizer, model = toy_model
    sources = open(files["src"], encoding="utf-8").read().splitlines()
    for name in ("ref", "wrong"):
        targets = open(files[name], encoding="utf-8").read().splitlines()
        result = scored("--model", trained_toy, "--input", files["src"], "--score", files[name], "--batch-size", "16")
        assert result.shape == (LINES, 2)
        expected = [reference_log_prob(model, tokenizer, s, t) for s, t in zip(sources[:8], targets[:8])]
        np.testing.assert_allclose(result[:8, 0], expected, atol=1e-4)
        lengths = np.array([len(ids) + 1 for ids in tokenizer.encode_target(targets)])
        alpha = config.translate.length_penalty
        np.testing.assert_allclose(result[:, 1], result[:, 0] / length_penalty(lengths, alpha).numpy(), atol=1e-5)
    assert np.all(result[:, 0] < -1.0)  # wrong translations are improbable: the numbers are not all ~0


def test_beam_output_scores_at_least_as_high_as_the_reference(trained_toy, files, tmp_path):
    nbest = translate("--model", trained_toy, "--input", files["src"], "--beam-size", "5", "--n-best", "1")
    hypotheses = tmp_path / "hyp"
    hypotheses.write_text("".join(line.split(" ||| ")[1] + "\n" for line in nbest), encoding="utf-8")
    ours = scored("--model", trained_toy, "--input", files["src"], "--score", str(hypotheses))
    reference = scored("--model", trained_toy, "--input", files["src"], "--score", files["ref"])
    assert np.mean(ours[:, 1] >= reference[:, 1] - 1e-5) >= 0.9
    # Scoring a hypothesis gives the score the search gave it.
    np.testing.assert_allclose(ours[:, 1], [float(line.split(" ||| ")[2]) for line in nbest], atol=2e-4)
    # An ensemble of the model with itself scores as the model.
    ensemble = scored("--model", trained_toy, "--model", trained_toy, "--input", files["src"], "--score", files["ref"])
    np.testing.assert_allclose(ensemble, reference, atol=1e-5)


def test_score_pairs_with_empty_lines_each_get_one_line(trained_toy, tmp_path):
    targets = tmp_path / "targets"
    targets.write_text("T1\n\nT3 T4\n", encoding="utf-8")
    result = run_main("translate.py", "--model", trained_toy, "--score", str(targets), stdin="\ns1 s2\ns4 s3\n")
    assert result.returncode == 0, result.stderr
    values = [[float(x) for x in line.split("\t")] for line in result.stdout.splitlines()]
    assert len(values) == 3 and all(v[0] < 0 for v in values)


def test_score_with_a_different_line_count_gives_one_line(trained_toy, files, tmp_path):
    short = tmp_path / "short"
    short.write_text("T1\nT2\nT3\n", encoding="utf-8")
    result = run_main("translate.py", "--model", trained_toy, "--input", files["src"], "--score", str(short))
    assert_one_line_error(result, f"{short} has 3 lines but {files['src']} has {LINES}")
    assert result.stdout == ""
    # From a pipe the count is known only at its end.
    result = run_main("translate.py", "--model", trained_toy, "--score", str(short), stdin="s1\ns2\n")
    assert_one_line_error(result, f"{short} has 3 lines but <stdin> has 2")
    result = run_main("translate.py", "--model", trained_toy, "--score", str(short), stdin="s1\ns2\ns3\ns4\n")
    assert_one_line_error(result, f"{short} has 3 lines but <stdin> has 4")


# Sampling.

def test_sampling_is_reproducible_with_a_seed(trained_toy, files):
    options = ["--model", trained_toy, "--input", files["src"], "--sampling-temperature", "3"]
    first = translate(*options, "--seed", "7")
    assert len(first) == LINES
    assert translate(*options, "--seed", "7") == first
    assert translate(*options, "--seed", "8") != first


def test_a_line_samples_the_same_whatever_its_batch_and_chunk(toy_model, files):
    from seq2seq.translate import Translator

    config, tokenizer, model = toy_model
    lines = open(files["src"], encoding="utf-8").read().splitlines()
    translator = Translator(model, tokenizer, config.translate, n_best=2, sampling=Sampling(0, 3.0), seed=5)
    whole = translator.translate_stream([lines], lambda i, h: None, batch_size=64)
    assert translator.translate_stream([lines[:7], lines[7:]], lambda i, h: None, batch_size=5) == whole
    assert len(set(whole)) > LINES // 2  # at temperature 3, samples vary
    # A line's samples depend on its number: the same line elsewhere samples otherwise.
    again = translator.translate_stream([[lines[0]] * 10], lambda i, h: None)
    assert len(set(again)) > 1


def test_sampling_at_temperature_near_zero_is_greedy(toy_model, files):
    from seq2seq.translate import Translator

    config, tokenizer, model = toy_model
    lines = open(files["src"], encoding="utf-8").read().splitlines()
    greedy = Translator(model, tokenizer, config.translate, beam_size=1).translate(lines)
    cold = Translator(model, tokenizer, config.translate, sampling=Sampling(0, 1e-4), seed=3).translate(lines)
    warm = Translator(model, tokenizer, config.translate, sampling=Sampling(0, 3.0), seed=3).translate(lines)
    assert cold == greedy and warm != greedy


def test_n_samples_are_scored_by_the_model(trained_toy, files, tmp_path):
    lines = translate("--model", trained_toy, "--input", files["src"], "--sampling-topk", "0",
                      "--sampling-temperature", "2", "--seed", "1", "--n-best", "3")
    assert len(lines) == 3 * LINES
    assert [int(line.split(" ||| ")[0]) for line in lines] == [i // 3 for i in range(3 * LINES)]
    samples = tmp_path / "samples"
    samples.write_text("".join(line.split(" ||| ")[1] + "\n" for line in lines), encoding="utf-8")
    sources = tmp_path / "sources"
    sources.write_text("".join(line + "\n" for line in open(files["src"], encoding="utf-8").read().splitlines()
                               for _ in range(3)), encoding="utf-8")
    # A sample's score is the model's (untempered) score of it, as --score gives it.
    np.testing.assert_allclose(scored("--model", trained_toy, "--input", str(sources), "--score", str(samples))[:, 1],
                               [float(line.split(" ||| ")[2]) for line in lines], atol=2e-4)


@pytest.mark.parametrize("topk, temperature", [(0, 2.0), (4, 1.0)])
def test_sampled_first_tokens_follow_the_tempered_softmax(toy_model, topk, temperature):
    """1,000 samples of the first output token for a source the model is unsure about."""
    _, tokenizer, model = toy_model
    source = pad(tokenizer.encode_source(["T1 T2"]))
    memory, state = model.encode(tf.constant(source))
    logits = model.decode_step(tf.constant([BOS_ID]), state, memory)[0][0].numpy().astype(np.float64)

    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    never = [PAD_ID, BOS_ID]  # not outputs, never sampled
    usable = logits.copy()
    usable[never] = -np.inf
    top = np.argsort(-usable)[:topk] if topk else np.setdiff1d(np.arange(len(logits)), never)
    kept = np.full_like(logits, -np.inf)
    kept[top] = logits[top]
    wanted = softmax(kept / temperature)
    searcher = Searcher(model, 1, 0.6, 2.0, 1, attention=False, sampling=Sampling(topk, temperature))
    tokens = np.asarray(searcher(np.repeat(source, 1000, axis=0), 11).tokens)[:, 0, 0]
    counts = np.bincount(tokens, minlength=len(logits))
    assert set(np.flatnonzero(counts)) <= set(top)
    statistic, df = chi_square(counts, wanted)
    assert df >= 3 and statistic < chi_square_999(df)
    # The test tells the wanted distribution from those of a sampler gone wrong: the temperature
    # not applied, or top-k not applied.
    wrongs = [w for w in (softmax(kept), softmax(usable / temperature)) if np.abs(w - wanted).sum() > 0.1]
    assert wrongs
    for wrong in wrongs:
        statistic, df = chi_square(counts, wrong)
        assert statistic > chi_square_999(df)


def test_top_k_sampling_never_leaves_the_top_k():
    """A stand-in model with the same next-token distribution at every step: every sampled
    token, at every step, is one of its 3 most probable."""

    class Fixed:
        logits = tf.math.log(tf.constant([1e-3, 1e-3, 1e-3, 0.2, 0.3, 0.25, 0.149, 0.05, 0.047]))

        def target_ids(self, indices):
            return indices

        def encode(self, source):
            return {"mask": tf.not_equal(source, 0)}, {"unused": tf.zeros([tf.shape(source)[0]])}

        def step_weights(self, output_multiple=1):
            return {}

        def decode_step(self, token, state, memory, weights=None, beam=1):
            memory = tf.nest.map_structure(lambda x: tf.repeat(x, beam, axis=0), memory)  # a row per hypothesis
            weights = tf.cast(memory["mask"], tf.float32)
            logits = tf.tile(self.logits[None], [tf.shape(token)[0], 1])
            return logits, state, weights / tf.reduce_sum(weights, -1, keepdims=True)

    searcher = Searcher(Fixed(), 4, 0.0, 3.0, 1, n_best=4, sampling=Sampling(3, 1.5))
    result = searcher(np.array([[5, 6, 7, EOS_ID]] * 50, np.int32), 5)
    tokens, lengths = np.asarray(result.tokens), np.asarray(result.lengths)
    assert np.all(lengths >= 1)
    inside = np.arange(tokens.shape[-1])[None, None] < lengths[..., None]
    assert set(tokens[inside].tolist()) == {EOS_ID, 4, 5}  # all three seen, nothing else


@pytest.mark.parametrize("options", [{"beam_size": 3, "n_best": 2}, {"n_best": 2, "sampling": Sampling(0, 3.0)}],
                         ids=["beam", "sampling"])
def test_batches_searched_at_once_give_what_one_at_a_time_gives(toy_model, files, options):
    import threading

    from seq2seq.translate import Translator

    config, tokenizer, model = toy_model
    lines = open(files["src"], encoding="utf-8").read().splitlines()
    results = {}
    for parallel in (1, 2):
        translator = Translator(model, tokenizer, config.translate, seed=4, parallel_batches=parallel, **options)
        searcher, threads = translator.searchers[True], set()

        def recorded(*args, searcher=searcher, threads=threads):
            threads.add(threading.current_thread().name)
            return searcher(*args)

        translator.searchers[True] = recorded
        results[parallel] = translator.hypotheses(lines, batch_size=3, attention=True)
        assert (threads == {"MainThread"}) == (parallel == 1), threads
    for one, two in zip(results[1], results[2]):
        assert [(h.text, h.score, h.target_pieces) for h in one] == [(h.text, h.score, h.target_pieces) for h in two]
        for a, b in zip(one, two):
            np.testing.assert_array_equal(a.attention, b.attention)
