"""The output vocabulary (model.output_vocabulary: observed): the file, the restricted output
layer against a full one, and a training that uses it from end to end."""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from conftest import assert_one_line_error, run_main, toy_config, write_yaml
from seq2seq import vocabulary
from seq2seq.config import config_from_dict
from seq2seq.errors import ConfigError, ModelDirError
from seq2seq.model import Seq2Seq
from seq2seq.model_dir import load_decoder, load_model
from seq2seq.optimization import cross_entropy, sequence_loss
from seq2seq.scoring import forced_log_probs
from seq2seq.search import beam_search
from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from seq2seq.training import Trainer
from seq2seq.translate import Translator

VOCAB = 30
PIECES = [PAD_ID, UNK_ID, BOS_ID, EOS_ID, 5, 8, 9, 13, 17, 21, 22, 29]
SOURCE = tf.constant([[4, 5, 6, 7, EOS_ID], [9, 10, EOS_ID, PAD_ID, PAD_ID]])
TARGET = tf.constant([[5, 8, 13, EOS_ID], [29, 22, EOS_ID, PAD_ID]])


def test_observed_ids_are_the_counted_ones_and_the_special_ones():
    counts = np.zeros(VOCAB, np.int64)
    counts[[9, 5, 29]] = [3, 1, 7]
    assert vocabulary.observed(counts) == [PAD_ID, UNK_ID, BOS_ID, EOS_ID, 5, 9, 29]


def test_file_round_trip(tmp_path):
    path = str(tmp_path / vocabulary.FILE)
    vocabulary.write(path, PIECES, lambda i: f"▁w{i}")
    assert open(path, encoding="utf-8").read().splitlines()[4] == "5\t▁w5"
    assert vocabulary.read(path, VOCAB) == PIECES


@pytest.mark.parametrize("text, fragment", [
    ("0\t<pad>\n1\t<unk>\n2\t<s>\n3\t</s>\nfive\tx\n", ":5: expected 'id<TAB>piece' with an id below 30"),
    ("0\t<pad>\n1\t<unk>\n2\t<s>\n3\t</s>\n30\tx\n", ":5: expected 'id<TAB>piece' with an id below 30"),
    ("0\t<pad>\n1\t<unk>\n2\t<s>\n3\t</s>\n9\tx\n7\ty\n", ":6: ids must ascend, 7 follows 9"),
    ("0\t<pad>\n2\t<s>\n3\t</s>\n9\tx\n", "the special ids [1] are missing"),
])
def test_damaged_file_is_one_error_with_file_and_line(tmp_path, text, fragment):
    path = tmp_path / vocabulary.FILE
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ModelDirError) as error:
        vocabulary.read(str(path), VOCAB)
    assert str(error.value).startswith(str(path)) and fragment in str(error.value), error.value


def test_missing_file_names_the_config_key(tmp_path):
    with pytest.raises(ModelDirError, match="output vocabulary not found .*model.output_vocabulary: observed"):
        vocabulary.read(str(tmp_path / vocabulary.FILE), VOCAB)


def test_training_counts_what_lies_outside_a_kept_vocabulary(tmp_path, toy_data):
    config = config_from_dict(toy_config(toy_data, **{"model.output_vocabulary": "observed"}))

    class Tokenizer:
        target_vocab_size = VOCAB
        target = type("Target", (), {"id_to_piece": staticmethod(lambda i: f"p{i}")})

    counts = np.zeros(VOCAB, np.int64)
    counts[[5, 9]] = [4, 2]
    first, outside = vocabulary.for_training(str(tmp_path / "a"), config, Tokenizer, counts, write_file=False)
    assert first == [0, 1, 2, 3, 5, 9] and outside == 0 and not os.path.exists(tmp_path / "a")
    os.makedirs(tmp_path / "b")
    vocabulary.for_training(str(tmp_path / "b"), config, Tokenizer, counts)
    counts[[7, 9]] = [3, 5]  # a fine-tuning corpus: id 7 is new
    os.makedirs(tmp_path / "c")
    ids, outside = vocabulary.for_training(str(tmp_path / "c"), config, Tokenizer, counts,
                                           init_from=str(tmp_path / "b"))
    assert ids == first and outside == 3
    assert vocabulary.read(vocabulary.path(str(tmp_path / "c")), VOCAB) == first


def test_config_refuses_observed_with_sampled_segmentations(toy_data):
    values = toy_config(toy_data, **{"model.output_vocabulary": "observed", "tokenizer.sampling_alpha": 0.1})
    values["tokenizer"]["model_type"] = "unigram"
    with pytest.raises(ConfigError, match="model.output_vocabulary: observed keeps the pieces of the best"):
        config_from_dict(values)


def _models(tie):
    """A full model and one restricted to PIECES with the same weights (the restricted output
    layer holds the full one's rows of PIECES)."""
    options = dict(embedding_dim=8, units=8, dropout=0.0, tie_embeddings=tie)
    full, restricted = Seq2Seq(13, VOCAB, **options), Seq2Seq(13, VOCAB, PIECES, **options)
    full.build_weights()
    restricted.build_weights()
    for a, b in zip(full.weights, restricted.weights):
        assert a.path.split("/", 1)[1] == b.path.split("/", 1)[1]
        value = a.numpy()
        if a.shape != b.shape:  # the output layer's kernel [units, vocab] or bias [vocab]
            value = value[..., PIECES]
        b.assign(value)
    return full, restricted


def _masked(full):
    """The full model with a bias of -1e9 outside PIECES: the same distribution as the restricted one."""
    bias = next(w for w in full.weights if "output" in w.path and w.path.endswith("bias"))
    outside = np.ones(VOCAB, bool)
    outside[PIECES] = False
    bias.assign(np.where(outside, -1e9, bias.numpy()))
    return full


@pytest.mark.parametrize("tie", [False, True])
def test_restricted_output_layer_scores_the_full_layers_columns(tie):
    full, restricted = _models(tie)
    np.testing.assert_allclose(restricted((SOURCE, TARGET)), tf.gather(full((SOURCE, TARGET)), PIECES, axis=-1),
                               rtol=1e-5, atol=1e-6)
    ids = tf.constant([[5, 29, 6], [UNK_ID, 0, 14]])
    np.testing.assert_array_equal(restricted.output_index(ids), [[4, 11, 1], [1, 0, 1]])  # 6 and 14 -> <unk>
    np.testing.assert_array_equal(restricted.target_ids(restricted.output_index(tf.constant(PIECES))), PIECES)
    np.testing.assert_array_equal(full.output_index(ids), ids)


@pytest.mark.parametrize("tie", [False, True])
def test_loss_search_and_scores_equal_a_full_model_masked_outside_the_pieces(tie):
    full, restricted = _models(tie)
    full = _masked(full)
    for model in (full, restricted):
        assert model.output_size == (VOCAB if model is full else len(PIECES))
    np.testing.assert_allclose(sequence_loss(restricted, SOURCE, TARGET)[0], sequence_loss(full, SOURCE, TARGET)[0],
                               rtol=1e-5)
    np.testing.assert_allclose(forced_log_probs(restricted, SOURCE, TARGET)[0],
                               forced_log_probs(full, SOURCE, TARGET)[0], rtol=1e-5)
    for beam in (1, 4):
        ours, theirs = (beam_search(m, SOURCE, beam, 1.0, 2.0, 1, n_best=beam) for m in (restricted, full))
        np.testing.assert_array_equal(ours.tokens, theirs.tokens)
        np.testing.assert_allclose(ours.scores, theirs.scores, rtol=1e-5)
        assert set(np.unique(ours.tokens)) <= set(PIECES)


def test_label_smoothing_spreads_over_the_output_vocabulary_only():
    _, restricted = _models(False)
    logits = restricted((SOURCE, tf.concat([tf.fill([2, 1], BOS_ID), TARGET[:, :-1]], 1)))
    real = tf.not_equal(TARGET, PAD_ID)
    expected = cross_entropy(restricted.output_index(tf.boolean_mask(TARGET, real)), tf.boolean_mask(logits, real),
                             0.1)
    loss, tokens = sequence_loss(restricted, SOURCE, TARGET, label_smoothing=0.1)
    assert tokens == 7
    np.testing.assert_allclose(loss, tf.reduce_sum(expected), rtol=1e-5)


def test_tied_output_trains_the_embedding_rows_it_scores():
    _, restricted = _models(True)
    embedding = restricted.decoder.embedding.embeddings
    with tf.GradientTape() as tape:
        logits = restricted.decoder.logits(tf.random.normal([3, 8], seed=3))
        loss = tf.reduce_sum(logits * tf.random.normal(logits.shape, seed=4))
    gradient = tf.convert_to_tensor(tape.gradient(loss, embedding)).numpy()
    touched = np.flatnonzero(np.abs(gradient).sum(axis=1))
    assert list(touched) == PIECES


@pytest.fixture(scope="module")
def observed_toy(toy_data, trained_toy, tmp_path_factory):
    """A toy model trained with the observed output vocabulary, from ``trained_toy``'s
    SentencePiece model."""
    model_dir = str(tmp_path_factory.mktemp("observed") / "model")
    os.makedirs(model_dir)
    for name in ("spm.model", "spm.vocab"):
        shutil.copy(os.path.join(trained_toy, name), model_dir)
    Trainer(config_from_dict(toy_config(toy_data, **{"model.output_vocabulary": "observed"})), model_dir).train()
    return model_dir


def test_a_model_with_the_observed_vocabulary_learns_the_toy_task(observed_toy, toy_data):
    config, tokenizer, model = load_model(observed_toy)
    pieces = vocabulary.read(vocabulary.path(observed_toy), tokenizer.target_vocab_size)
    target_words = set(open(f"{toy_data}/train.tgt").read().split())
    assert {tokenizer.target.id_to_piece(i).lstrip("▁") for i in pieces[4:]} == target_words  # no source word
    assert model.output_size == len(pieces) == len(target_words) + 4 < tokenizer.target_vocab_size
    assert "output vocabulary: 24 of the 44 target pieces" in open(os.path.join(observed_toy, "train.log")).read()
    sources = open(f"{toy_data}/test.src").read().splitlines()
    references = open(f"{toy_data}/test.tgt").read().splitlines()
    hypotheses = Translator(model, tokenizer, config.translate).translate(sources)
    exact = np.mean([h == r for h, r in zip(hypotheses, references)])
    assert exact >= 0.95, list(zip(hypotheses, references))[:5]


def test_translate_and_score_read_the_output_vocabulary(observed_toy, toy_data, tmp_path):
    source = tmp_path / "in.src"
    source.write_text("s1 s2 s3\ns4 s5\n", encoding="utf-8")
    translated = run_main("translate.py", "--model", observed_toy, "--input", str(source))
    assert translated.returncode == 0, translated.stderr
    assert translated.stdout.splitlines()[1] == "T18 T11"  # s5 s4, each word mapped
    target = tmp_path / "in.tgt"
    target.write_text(translated.stdout, encoding="utf-8")
    scored = run_main("translate.py", "--model", observed_toy, "--input", str(source), "--score", str(target))
    assert scored.returncode == 0, scored.stderr
    rows = [line.split() for line in scored.stdout.splitlines()]
    assert len(rows) == 2 and all(float(value) > -1.0 for row in rows for value in row), rows


def test_fine_tuning_keeps_the_output_vocabulary(observed_toy, toy_data, tmp_path):
    config_path = write_yaml(tmp_path / "ft.yaml", toy_config(toy_data, **{
        "model.output_vocabulary": "observed", "training.max_steps": 10, "training.validate_every": 10}))
    tuned = str(tmp_path / "tuned")
    result = run_main("train.py", "--config", config_path, "--init-from", observed_toy, "--model-dir", tuned)
    assert result.returncode == 0, result.stderr
    assert open(vocabulary.path(tuned)).read() == open(vocabulary.path(observed_toy)).read()


def test_ensemble_members_must_share_the_output_vocabulary(observed_toy, trained_toy):
    with pytest.raises(ModelDirError, match="different output vocabularies"):
        load_decoder([observed_toy, trained_toy])
    source = os.path.join(os.path.dirname(observed_toy), "one.src")
    with open(source, "w", encoding="utf-8") as f:
        f.write("s1 s2\n")
    result = run_main("translate.py", "--model", observed_toy, "--model", trained_toy, "--input", source)
    assert_one_line_error(result, "different output vocabularies")
