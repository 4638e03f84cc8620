"""Sampled segmentations that a seed fixes: ``seq2seq.segmentation.NBestSampler`` against
SentencePiece's own n-best lists, scores and sampling distribution, and through the input
pipeline and a training run."""

import json
import os

import numpy as np
import pytest
import sentencepiece as spm
import tensorflow as tf

from conftest import chi_square, chi_square_999, toy_config
from seq2seq.config import DataConfig, TokenizerConfig, config_from_dict
from seq2seq.corpus import Corpus
from seq2seq.dataset import encoded_dataset
from seq2seq.model_dir import TRAINING_HISTORY
from seq2seq.segmentation import NBestSampler, seeded
from seq2seq.tokenizer import Tokenizer

LINES = ["s1 s2 s13 s7", "s12 s3", "T11 é ü ß", "s4 \x07 s5 s19 s11", "s17"]


@pytest.fixture(scope="module")
def models(toy_data, tmp_path_factory):
    """Unigram and bpe SentencePiece models of the toy corpus; its source and target files."""
    path = tmp_path_factory.mktemp("segmentation")
    data = DataConfig(f"{toy_data}/train.src", f"{toy_data}/train.tgt")
    trained = {kind: Tokenizer.train(str(path / kind), data, TokenizerConfig(vocab_size=48, model_type=kind), 1)
               for kind in ("unigram", "bpe")}
    return trained, Corpus(data.train_source, data.train_target)


def test_seeded_sampling_is_for_unigram_models_with_an_nbest_size(models):
    trained, _ = models
    assert seeded(trained["unigram"].source_model_path, 2)
    assert not seeded(trained["unigram"].source_model_path, -1)  # all segmentations: the op's sampler
    assert not seeded(trained["bpe"].source_model_path, 8)  # BPE-dropout: the op's


@pytest.mark.parametrize("lines", [LINES[:2] + LINES[3:4], LINES], ids=["n-best each", "fewer for some"])
def test_candidates_and_their_log_probabilities_are_sentencepieces(models, lines):
    """The n-best lists and scores of SentencePiece's Python package, line by line, whether
    every line has ``nbest_size`` segmentations (one call for all) or not (one call a line):
    "s17" has fewer, and "é ü ß" are unknown pieces, which the lattice scores apart."""
    path = models[0]["unigram"].source_model_path
    sampler = NBestSampler(path, 6, 0.5)
    candidates = sampler.candidates(tf.constant(lines))
    log_probs = sampler.log_prob(candidates).to_list()
    processor = spm.SentencePieceProcessor(model_file=path)
    assert [len(c) for c in candidates.to_list()] != [1] * len(lines)
    for line, ids, scores in zip(lines, candidates.to_list(), log_probs):
        wanted = processor.nbest_encode_as_immutable_proto(line, 6).nbests
        assert ids == [[piece.id for piece in n.pieces] for n in wanted]
        np.testing.assert_allclose(scores, [n.score for n in wanted], rtol=1e-5)


def test_samples_follow_the_tempered_distribution_over_the_n_best(models):
    """2,000 samples of one line, each from its own seed, against ``softmax(alpha * log P)``."""
    path = models[0]["unigram"].source_model_path
    sampler = NBestSampler(path, 8, 0.3)
    line = tf.constant(["s1 s2 s13 s7"])
    candidates = sampler.candidates(line).to_list()[0]
    logits = 0.3 * np.array(sampler.log_prob(sampler.candidates(line)).to_list()[0], np.float64)
    wanted = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    draws = [sampler.tokenize(line, tf.constant([seed, 7], tf.int64)).to_list()[0] for seed in range(2000)]
    counts = np.array([draws.count(c) for c in candidates])
    assert counts.sum() == 2000 and len(candidates) == 8
    statistic, df = chi_square(counts, wanted)
    assert df >= 3 and statistic < chi_square_999(df)


def test_a_seed_fixes_the_samples_and_each_iteration_draws_new_ones(models):
    trained, corpus = models

    def epochs(seed, nbest_size=4):
        """Two passes over the first 50 pairs of one dataset."""
        dataset = encoded_dataset(corpus, trained["unigram"], 60, 0.5, nbest_size, seed=seed).take(50)
        return [[(s.numpy().tolist(), t.numpy().tolist()) for s, t in dataset] for _ in range(2)]

    best = [[(s.numpy().tolist(), t.numpy().tolist()) for s, t in encoded_dataset(corpus, trained["unigram"], 60)
             .take(50)]]
    first, again, other = epochs(5), epochs(5), epochs(6)
    assert first == again  # the same seed: the same samples, iteration by iteration
    assert first[0] != first[1] and first[0] != other[0] and first[0] != best[0]
    decode = trained["unigram"].target.decode
    assert [decode(t[:-1]) for _, t in first[1]] == [decode(t[:-1]) for _, t in best[0]]


def test_a_training_run_with_seeded_sampling_repeats(toy_data, tmp_path):
    """Two runs of the same config from empty model directories: the same losses to the digit."""
    from seq2seq.training import Trainer

    values = toy_config(toy_data, **{"training.max_steps": 6, "training.validate_every": 100,
                                     "training.log_every": 1})
    values["tokenizer"] = {"vocab_size": 48, "model_type": "unigram", "sampling_alpha": 0.5, "nbest_size": 4}

    def losses(name):
        model_dir = str(tmp_path / name)
        Trainer(config_from_dict(values), model_dir).train()
        with open(os.path.join(model_dir, "train.log"), encoding="utf-8") as f:
            assert "alpha 0.5, nbest_size 4 (seeded by training.seed)" in f.read()
        with open(os.path.join(model_dir, TRAINING_HISTORY), encoding="utf-8") as f:
            return [json.loads(line)["loss"] for line in f]

    first = losses("first")
    assert len(first) == 6 and first == losses("second")
