"""Your own data: corpora as one TSV file or gzip, fine-tuning a trained model on another task,
and subword regularization (sampled segmentations in the training batches only)."""

import gzip
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from conftest import assert_one_line_error, run_main, toy, toy_config, write_yaml
from seq2seq.config import DataConfig, TokenizerConfig, TrainingConfig, config_from_dict, languages
from seq2seq.corpus import Corpus
from seq2seq.dataset import _BLANK, CorpusStats, encoded_dataset, encoded_pairs, training_dataset
from seq2seq.errors import DataError
from seq2seq.model_dir import TRAINING_HISTORY, load_model, read_history, read_model_config
from seq2seq.tokenizer import EOS_ID, Tokenizer
from seq2seq.translate import Translator


def _write(path, lines, compress=False):
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(data)
    return str(path)


def _tsv(toy_data, tmp_path, split, compress):
    sources = open(f"{toy_data}/{split}.src", encoding="utf-8").read().splitlines()
    targets = open(f"{toy_data}/{split}.tgt", encoding="utf-8").read().splitlines()
    name = f"{split}.src-tgt.tsv" + (".gz" if compress else "")
    return _write(tmp_path / name, [f"{s}\t{t}" for s, t in zip(sources, targets)], compress)


@pytest.fixture(scope="module")
def word_tokenizer(toy_data, tmp_path_factory):
    data = DataConfig(f"{toy_data}/train.src", f"{toy_data}/train.tgt")
    return Tokenizer.train(str(tmp_path_factory.mktemp("spm")), data, TokenizerConfig(vocab_size=64, model_type="word"),
                           1)


# -- corpora as users have them -----------------------------------------------------------------


def test_tsv_and_gzip_corpora_give_the_batches_of_separate_files(toy_data, tmp_path, word_tokenizer):
    separate = Corpus(f"{toy_data}/train.src", f"{toy_data}/train.tgt")
    gzipped = Corpus(*(_write(tmp_path / f"train.{ext}.gz", open(f"{toy_data}/train.{ext}").read().splitlines(),
                              True) for ext in ("src", "tgt")))
    tsv = Corpus(tsv=_tsv(toy_data, tmp_path, "train", compress=True))
    assert list(tsv.pairs()) == list(gzipped.pairs()) == list(separate.pairs())
    assert tsv.check() == gzipped.check() == 4000
    config = TrainingConfig(batch_tokens=200, max_length=20, shuffle_buffer=100)

    def batches(corpus):
        return [(s.numpy(), t.numpy()) for s, t in training_dataset(corpus, word_tokenizer, config, 0).take(5)]

    expected = batches(separate)
    for corpus in (gzipped, tsv):
        assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(batches(corpus),
                                                                                             expected))


def test_sentencepiece_trains_on_a_gzipped_tsv_file(toy_data, tmp_path):
    tokenizer = TokenizerConfig(vocab_size=64, model_type="word")
    data = DataConfig(train=_tsv(toy_data, tmp_path, "train", compress=True))
    from_tsv = Tokenizer.train(str(tmp_path / "tsv"), data, tokenizer, 1)
    separate = Tokenizer.train(str(tmp_path / "separate"), DataConfig(f"{toy_data}/train.src",
                                                                      f"{toy_data}/train.tgt"), tokenizer, 1)
    pieces = [[model.id_to_piece(i) for i in range(model.get_piece_size())] for model in (from_tsv.source,
                                                                                         separate.source)]
    assert pieces[0] == pieces[1] and "▁T7" in pieces[0] and "▁s7" in pieces[0]


@pytest.mark.parametrize("bad_line, tabs", [("s1 s2 T2 T1", 0), ("s1\tT1\tT2", 2)])
def test_a_tsv_line_without_exactly_one_tab_is_one_error_line(toy_data, tmp_path, bad_line, tabs):
    lines = ["s1 s2\tT2 T1", "s3\tT3", bad_line, "s4\tT4"]
    path = _write(tmp_path / "train.tsv.gz", lines, compress=True)
    values = toy_config(toy_data)
    values["data"]["train"] = path
    result = run_main("train.py", "--config", write_yaml(tmp_path / "c.yaml", values), "--model-dir",
                      str(tmp_path / "m"))
    assert_one_line_error(result, f"{path}:3:", "exactly one tab", f"found {tabs} tabs")
    assert not os.path.exists(tmp_path / "m")


def test_a_gz_file_that_is_not_gzip_is_one_error_line(toy_data, tmp_path):
    path = _write(tmp_path / "valid.tsv.gz", ["s1\tT1"])  # plain text under a .gz name
    values = toy_config(toy_data)
    values["data"]["valid"] = path
    result = run_main("train.py", "--config", write_yaml(tmp_path / "c.yaml", values))
    assert_one_line_error(result, path, "not a readable gzip file")


def test_translate_reads_gzipped_input_and_reference(trained_toy, toy_data, tmp_path):
    lines = open(f"{toy_data}/test.src").read().splitlines()[:6]
    references = open(f"{toy_data}/test.tgt").read().splitlines()[:6]
    source, reference = _write(tmp_path / "in.gz", lines, True), _write(tmp_path / "ref.gz", references, True)
    result = run_main("translate.py", "--model", trained_toy, "--input", source, "--reference", reference,
                      "--beam-size", "1")
    assert result.returncode == 0, result.stderr
    config, tokenizer, model = load_model(trained_toy)
    assert result.stdout.splitlines() == Translator(model, tokenizer, config.translate, 1).translate(lines)
    assert "BLEU" in result.stderr and "chrF" in result.stderr
    broken = _write(tmp_path / "broken.gz", lines)
    assert_one_line_error(run_main("translate.py", "--model", trained_toy, "--input", broken), broken,
                          "not a gzip file")


def test_languages_come_from_gz_and_tsv_names():
    assert languages(config_from_dict({"data": {"train_source": "x/train.fr.gz", "train_target": "x/train.en.gz"}}))\
        == ("fr", "en")
    assert languages(config_from_dict({"data": {"train": "x/train.de-en.tsv.gz"}})) == ("de", "en")
    assert languages(config_from_dict({"data": {"train": "corpus.de-en.tsv"}})) == ("de", "en")


# -- fine-tuning --------------------------------------------------------------------------------


def _first_loss(model_dir):
    return read_history(model_dir, TRAINING_HISTORY)[0]["loss"]  # log_every 1: the first step's loss


def _exact(translator, data_dir):
    """The fraction of the test sentences of ``data_dir`` that ``translator`` gets exactly right."""
    sources = open(f"{data_dir}/test.src").read().splitlines()
    references = open(f"{data_dir}/test.tgt").read().splitlines()
    hypotheses = translator.translate(sources)
    return np.mean([h == r for h, r in zip(hypotheses, references)])


def test_fine_tuning_starts_from_the_trained_model_and_reaches_the_bar_sooner(trained_toy, tmp_path):
    # The second task: the first one with the targets of s0 and s1 exchanged, as a TSV file, gzipped.
    second = str(tmp_path / "second")
    toy.write_splits(second, table=toy.mapping([("s0", "s1")]))
    steps = {"training.max_steps": 60, "training.validate_every": 60, "training.log_every": 1}
    values = toy_config(second, **steps, **{"training.learning_rate": 0.002})
    del values["model"], values["tokenizer"]  # the trained model's
    values["data"]["train"] = _tsv(second, tmp_path, "train", compress=True)
    config_path, fine_tuned = write_yaml(tmp_path / "fine.yaml", values), str(tmp_path / "fine")
    result = run_main("train.py", "--config", config_path, "--init-from", trained_toy, "--model-dir", fine_tuned)
    assert result.returncode == 0, result.stderr
    log = open(os.path.join(fine_tuned, "train.log"), encoding="utf-8").read()
    assert "data.train is set: data.train_source and data.train_target are not used" in log
    assert "fine-tuning: the model starts from" in log
    with open(os.path.join(trained_toy, "spm.model"), "rb") as a, open(os.path.join(fine_tuned, "spm.model"), "rb") as b:
        assert a.read() == b.read()
    # Fresh counters: the one validation is at step 60 of the new run, its best score the first.
    assert [(r["step"], r["bleu"] == r["best_bleu"]) for r in read_history(fine_tuned)] == [(60, True)]

    scratch = str(tmp_path / "scratch")
    from seq2seq.training import Trainer

    trainer = Trainer(config_from_dict(toy_config(second, **steps)), scratch)
    trainer.train()
    assert _first_loss(fine_tuned) < 0.5 * _first_loss(scratch)
    # The bar of test_tiny_model_learns_the_toy_task: reached within 60 steps by fine-tuning, not
    # from scratch, which needs more steps. (The scratch model's last weights are its best: one
    # validation; its validation translator is greedy and compiled.)
    config, tokenizer, model = load_model(fine_tuned)
    assert _exact(Translator(model, tokenizer, config.translate, beam_size=1), second) >= 0.95
    assert _exact(trainer.evaluator.translator, second) < 0.95

    again = run_main("train.py", "--config", config_path, "--init-from", trained_toy, "--model-dir", fine_tuned)
    assert again.returncode == 0, again.stderr
    log = open(os.path.join(fine_tuned, "train.log"), encoding="utf-8").read()
    assert "resumed from" in log and log.count("fine-tuning: the model starts from") == 1


@pytest.mark.parametrize("change, fragment", [
    ({"model.units": 32}, "model.units=32 differs from the model it fine-tunes"),
    ({"tokenizer.vocab_size": 100}, "tokenizer.vocab_size=100 differs"),
])
def test_fine_tuning_refuses_another_model_or_tokenizer(trained_toy, toy_data, tmp_path, change, fragment):
    in_file = run_main("train.py", "--config", write_yaml(tmp_path / "c.yaml", toy_config(toy_data, **change)),
                       "--init-from", trained_toy, "--model-dir", str(tmp_path / "m"))
    assert_one_line_error(in_file, "c.yaml", fragment, trained_toy)
    (key, value), = change.items()
    values = toy_config(toy_data)
    del values["model"], values["tokenizer"]
    in_set = run_main("train.py", "--config", write_yaml(tmp_path / "d.yaml", values), "--init-from", trained_toy,
                      "--model-dir", str(tmp_path / "m"), "--set", f"{key}={value}")
    assert_one_line_error(in_set, fragment)
    assert not os.path.exists(tmp_path / "m")


def test_fine_tuning_from_what_is_not_a_trained_model_is_one_error_line(trained_toy, toy_data, tmp_path):
    config = write_yaml(tmp_path / "c.yaml", toy_config(toy_data))
    for init_from, fragment in ((tmp_path, "not a model directory"), (tmp_path / "none", "model directory not found")):
        result = run_main("train.py", "--config", config, "--init-from", str(init_from), "--model-dir",
                          str(tmp_path / "m"))
        assert_one_line_error(result, str(init_from), fragment)
    untrained = tmp_path / "untrained"
    shutil.copytree(trained_toy, untrained, ignore=shutil.ignore_patterns("best", "checkpoints", "averaging"))
    result = run_main("train.py", "--config", config, "--init-from", str(untrained), "--model-dir", str(tmp_path / "m"))
    assert_one_line_error(result, str(untrained), "no trained checkpoint")
    result = run_main("train.py", "--config", config, "--init-from", trained_toy, "--model-dir", trained_toy)
    assert_one_line_error(result, "--model-dir", "not the one of --init-from")


def test_fine_tuning_config_keeps_the_trained_sections_and_takes_the_rest(trained_toy, toy_data, tmp_path):
    from seq2seq.config import fine_tuning_config
    from seq2seq.model_dir import read_model_config

    trained = read_model_config(trained_toy)
    values = toy_config(toy_data, **{"training.learning_rate": 0.0001, "translate.beam_size": 3})
    values["model"] = {"units": trained.model.units}  # the same value: accepted
    config = fine_tuning_config(write_yaml(tmp_path / "c.yaml", values), ["training.max_steps=7"], trained,
                                trained_toy)
    assert config.model == trained.model and config.tokenizer == trained.tokenizer
    assert (config.training.learning_rate, config.training.max_steps, config.translate.beam_size) == (0.0001, 7, 3)


# -- subword regularization ---------------------------------------------------------------------

# Lines that exercise the reading rules: CRLF endings, a byte order mark, blank lines of Unicode
# spaces, accents, a zero-width space and a control character.
TRICKY = ["\ufeffs1 s2 s13", "s12 s3\r", "\u00a0\u2003", "T11 é ü ß", "s1\u200bs2 s19", "s4 \x07 s5", "  ", "s17 s18"]


@pytest.fixture(scope="module")
def unigram(toy_data, tmp_path_factory):
    """A unigram SentencePiece model with many ways to segment the toy words; the corpus it came
    from, with the tricky lines among its first ones."""
    path = tmp_path_factory.mktemp("unigram")
    sources = TRICKY + open(f"{toy_data}/train.src").read().splitlines()[:400]
    targets = [f"T{i % 20} {line}" if line.strip() else line for i, line in enumerate(sources)]
    data = DataConfig(_write(path / "train.src", sources), _write(path / "train.tgt", targets))
    models = {kind: Tokenizer.train(str(path / kind), data, TokenizerConfig(vocab_size=40, model_type=kind), 1)
              for kind in ("unigram", "bpe")}
    return models, Corpus(data.train_source, data.train_target)


@pytest.mark.parametrize("max_length, kept", [(60, 400 + len(TRICKY) - 2), (12, None)])
def test_graph_tokenizer_gives_the_python_tokenizers_ids(unigram, max_length, kept):
    """The same pairs, ids and EOS as the Python tokenizer: blank lines skipped (the two of
    TRICKY), and with max_length 12 the longer pairs too."""
    models, corpus = unigram
    stats = CorpusStats()
    python = list(encoded_pairs(corpus, models["unigram"], max_length, stats))
    graph = [(s.numpy(), t.numpy()) for s, t in encoded_dataset(corpus, models["unigram"], max_length)]
    assert len(graph) == len(python) == (kept or stats.pairs) and (kept or stats.too_long > 50)
    for (ps, pt), (gs, gt) in zip(python, graph):
        assert ps.tolist() == gs.tolist() and pt.tolist() == gt.tolist() and gs[-1] == gt[-1] == EOS_ID


def test_blank_lines_in_the_graph_are_those_python_strips_to_nothing():
    characters = [chr(c) for c in range(0x10000) if not 0xD800 <= c < 0xE000]
    blank = tf.strings.regex_full_match(tf.constant([(c * 2).encode("utf-8") for c in characters]), _BLANK).numpy()
    assert [c for c, b in zip(characters, blank) if b != (not (c * 2).strip())] == []
    assert blank.sum() > 20  # spaces, tabs, NBSP, the em space...


@pytest.mark.parametrize("kind, alpha", [("unigram", 0.5), ("bpe", 0.3)])
def test_each_epoch_samples_new_segmentations_and_without_sampling_the_same(unigram, kind, alpha):
    models, corpus = unigram
    tokenizer = models[kind]

    def epochs(sampling_alpha):
        """Two passes over the first 50 pairs of one dataset (two epochs' reading)."""
        dataset = encoded_dataset(corpus, tokenizer, 60, sampling_alpha, -1).take(50)
        return [[(s.numpy().tolist(), t.numpy().tolist()) for s, t in dataset] for _ in range(2)]

    best, again = epochs(0.0)
    first, second = epochs(alpha)
    assert best == again and len(best) == 50
    assert first != second and first != best and second != best
    # Every sample is a segmentation of the same sentence.
    decode = tokenizer.target.decode
    assert [decode(t[:-1]) for _, t in first] == [decode(t[:-1]) for _, t in second] == \
        [decode(t[:-1]) for _, t in best]


def test_sampled_sides_longer_than_max_length_take_the_best_segmentation(unigram):
    models, corpus = unigram
    max_length = 12
    best = list(encoded_pairs(corpus, models["unigram"], max_length))
    sampled = [(s.numpy(), t.numpy()) for s, t in encoded_dataset(corpus, models["unigram"], max_length, 0.05, -1)]
    assert len(sampled) == len(best)  # the same pairs are kept
    assert max(max(len(s), len(t)) for s, t in sampled) <= max_length
    assert sum(len(s) for s, _ in sampled) > sum(len(s) for s, _ in best)  # flat samples: more, shorter pieces


def test_a_fixed_seed_reproduces_the_batches(unigram):
    models, corpus = unigram
    config = TrainingConfig(batch_tokens=120, max_length=60, shuffle_buffer=200, seed=5)

    def run(epoch=0):
        tf.random.set_seed(1234)  # as keras.utils.set_random_seed(training.seed) at the start of a run
        return [(s.numpy(), t.numpy()) for s, t in training_dataset(corpus, models["unigram"], config, epoch).take(6)]

    def same(a, b):
        return len(a) == len(b) and all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1])
                                        for x, y in zip(a, b))

    first = run()
    assert len(first) == 6 and same(first, run()) and not same(first, run(epoch=1))


def test_training_with_sampling_runs_and_translation_stays_deterministic(unigram, tmp_path):
    from seq2seq.export import _sentencepiece
    from seq2seq.training import Trainer

    models, corpus = unigram
    values = toy_config("unused", **{"training.max_steps": 3, "training.validate_every": 100})
    valid = [_write(tmp_path / f"valid.{ext}", open(path, encoding="utf-8").read().splitlines()[8:20])
             for ext, path in (("src", corpus.source), ("tgt", corpus.target))]
    values["data"] = {"train_source": corpus.source, "train_target": corpus.target, "valid_source": valid[0],
                      "valid_target": valid[1]}
    values["tokenizer"] = {"vocab_size": 40, "model_type": "unigram", "sampling_alpha": 0.5}
    model_dir = str(tmp_path / "model")
    trainer = Trainer(config_from_dict(values), model_dir)
    trainer.train()
    assert "subword regularization: training segmentations sampled with alpha 0.5, nbest_size -1 (tensorflow-text" in \
        open(os.path.join(model_dir, "train.log"), encoding="utf-8").read()
    assert read_model_config(model_dir).tokenizer.sampling_alpha == 0.5
    lines = open(corpus.source, encoding="utf-8").read().splitlines()[8:40]
    translator, tokenizer = trainer.evaluator.translator, trainer.tokenizer  # what translate.py does, compiled
    assert translator.encode(lines)[0] == tokenizer.encode_source(lines)  # the best segmentation
    assert translator.translate(lines) == translator.translate(lines)
    # The SavedModel's tokenizer: the best segmentation too.
    exported = _sentencepiece(tokenizer.source_model_path)
    ids = [exported.tokenize(tf.constant(lines)).to_list() for _ in range(2)]
    assert ids[0] == ids[1] == [s[:-1] for s in tokenizer.encode_source(lines)]


def test_sampling_options_are_checked():
    from seq2seq.errors import ConfigError

    with pytest.raises(ConfigError, match="tokenizer.sampling_alpha: samples segmentations of unigram and bpe"):
        config_from_dict({"tokenizer": {"model_type": "word", "sampling_alpha": 0.1}})
    with pytest.raises(ConfigError, match="tokenizer.sampling_alpha: is the merge dropout rate"):
        config_from_dict({"tokenizer": {"model_type": "bpe", "sampling_alpha": 1.0}})
    with pytest.raises(ConfigError, match="tokenizer.nbest_size: must be -1"):
        config_from_dict({"tokenizer": {"nbest_size": 1}})
    with pytest.raises(DataError):
        Corpus(tsv="/nonexistent.tsv").check()
