import numpy as np
import pytest

from seq2seq.config import TrainingConfig
from seq2seq.corpus import Corpus, check_parallel
from seq2seq.dataset import (CorpusStats, bucket_batch_sizes, bucket_boundaries, decoder_inputs, encoded_pairs,
                             estimate_batches, evaluation_batches, training_dataset)
from seq2seq.errors import DataError
from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer


@pytest.fixture(scope="module")
def tokenizer(toy_data, tmp_path_factory):
    from seq2seq.config import DataConfig, TokenizerConfig

    data = DataConfig(f"{toy_data}/train.src", f"{toy_data}/train.tgt", "", "")
    return Tokenizer.train(str(tmp_path_factory.mktemp("spm")), data,
                           TokenizerConfig(vocab_size=64, model_type="word"), 1)


def _corpus(tmp_path, pairs):
    src, tgt = tmp_path / "c.src", tmp_path / "c.tgt"
    src.write_text("".join(s + "\n" for s, _ in pairs))
    tgt.write_text("".join(t + "\n" for _, t in pairs))
    return str(src), str(tgt)


def _toy(toy_data, split="train"):
    return Corpus(f"{toy_data}/{split}.src", f"{toy_data}/{split}.tgt")


def test_empty_and_too_long_pairs_are_skipped_and_counted(tokenizer, tmp_path):
    src, tgt = _corpus(tmp_path, [("s1 s2", "T1 T2"), ("", "T3"), ("s3", "   "), (" ".join(["s1"] * 30), "T1"),
                                  ("s4", "T4")])
    stats = CorpusStats()
    pairs = list(encoded_pairs(Corpus(src, tgt), tokenizer, max_length=10, stats=stats))
    assert (stats.lines, stats.pairs, stats.empty, stats.too_long) == (5, 2, 2, 1)
    source, target = pairs[0]
    assert source[-1] == EOS_ID and target[-1] == EOS_ID
    assert tokenizer.decode_target([target]) == ["T1 T2"]


def test_batches_respect_the_token_budget_and_keep_every_pair(toy_data, tokenizer):
    config = TrainingConfig(batch_tokens=120, max_length=20, shuffle_buffer=1000)
    batches = list(training_dataset(_toy(toy_data), tokenizer, config, 0))
    seen = 0
    for source, target in batches:
        assert source.shape[0] == target.shape[0]
        longest = max(source.shape[1], target.shape[1])
        assert source.shape[0] * longest <= config.batch_tokens
        seen += source.shape[0]
    assert seen == 4000
    estimated_stats, estimated = estimate_batches(_toy(toy_data), tokenizer, config)
    assert estimated == len(batches) and estimated_stats.pairs == 4000


def test_training_batches_run_without_tf_data_autotuning(toy_data, tokenizer):
    # Its optimization thread made deleting an epoch's iterator wait up to 60 s (dataset.py).
    config = TrainingConfig(batch_tokens=120, max_length=20, shuffle_buffer=100)
    dataset = training_dataset(_toy(toy_data), tokenizer, config, 0)
    assert dataset.options().autotune.enabled is False


def test_shuffle_is_seeded_by_seed_and_epoch(toy_data, tokenizer):
    config = TrainingConfig(batch_tokens=200, max_length=20, shuffle_buffer=500)

    def first_batch(epoch):
        source, _ = next(iter(training_dataset(_toy(toy_data), tokenizer, config, epoch)))
        return source.numpy()

    assert np.array_equal(first_batch(0), first_batch(0))
    assert not np.array_equal(first_batch(0), first_batch(1))


def test_bucket_sizes_cover_max_length():
    boundaries = bucket_boundaries(100)
    assert boundaries[0] == 8 and boundaries[-1] <= 100 and boundaries == sorted(boundaries)
    sizes = bucket_batch_sizes(boundaries, 4096, 100)
    assert len(sizes) == len(boundaries) + 1 and sizes[-1] == 4096 // 100


def test_decoder_inputs_start_with_bos_and_shift_right():
    target = np.array([[5, 6, EOS_ID], [7, EOS_ID, PAD_ID]], np.int32)
    assert decoder_inputs(target).numpy().tolist() == [[BOS_ID, 5, 6], [BOS_ID, 7, EOS_ID]]


def test_evaluation_batches_keep_all_nonempty_pairs(toy_data, tokenizer):
    config = TrainingConfig(batch_tokens=150, max_length=20)
    batches = evaluation_batches(_toy(toy_data, "valid"), tokenizer, config)
    assert sum(source.shape[0] for source, _ in batches) == 200
    assert all(s.shape[0] * max(s.shape[1], t.shape[1]) <= 150 for s, t in batches)


def test_check_parallel_reports_missing_files_and_mismatched_counts(tmp_path):
    src, tgt = _corpus(tmp_path, [("a", "b"), ("c", "d")])
    assert check_parallel(src, tgt) == 2
    with pytest.raises(DataError, match=r"missing\.src: file not found"):
        check_parallel(str(tmp_path / "missing.src"), tgt)
    with open(tgt, "a") as f:
        f.write("extra\n")
    with pytest.raises(DataError, match=r"c\.src has 2 lines but .*c\.tgt has 3"):
        check_parallel(src, tgt)


def test_invalid_utf8_names_file_and_line(tmp_path):
    src, tgt = _corpus(tmp_path, [("a", "b"), ("c", "d")])
    with open(tgt, "ab") as f:
        f.write(b"\xff\xfe bad\n")
    with pytest.raises(DataError, match=r"c\.tgt:3: invalid UTF-8"):
        check_parallel(src, tgt)
