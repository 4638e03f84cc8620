import os

import pytest

from seq2seq.config import DataConfig, TokenizerConfig, config_from_dict
from seq2seq.errors import UserError
from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, EarlyTraining, Tokenizer, sample_lines
from conftest import toy_config


def _tokenizer(toy_data, tmp_path, joint=True):
    data = DataConfig(f"{toy_data}/train.src", f"{toy_data}/train.tgt", f"{toy_data}/valid.src",
                      f"{toy_data}/valid.tgt")
    return Tokenizer.train(str(tmp_path), data, TokenizerConfig(vocab_size=64, joint=joint, model_type="word"), 1)


def test_special_ids_are_fixed(toy_data, tmp_path):
    tokenizer = _tokenizer(toy_data, tmp_path)
    sp = tokenizer.source
    assert [sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()] == [PAD_ID, UNK_ID, BOS_ID, EOS_ID]


def test_source_ends_with_eos_and_target_decodes_back(toy_data, tmp_path):
    tokenizer = _tokenizer(toy_data, tmp_path)
    [source] = tokenizer.encode_source(["s1 s2 s3"])
    assert source[-1] == EOS_ID and EOS_ID not in source[:-1] and len(source) == 4
    [target] = tokenizer.encode_target(["T1 T2"])
    assert EOS_ID not in target and BOS_ID not in target
    # Decoding stops at the first EOS and ignores padding and BOS.
    assert tokenizer.decode_target([[BOS_ID] + target + [EOS_ID] + target + [PAD_ID]]) == ["T1 T2"]


def test_joint_model_is_shared_and_separate_models_are_saved(toy_data, tmp_path):
    joint = _tokenizer(toy_data, tmp_path / "joint")
    assert joint.source is joint.target
    assert sorted(os.listdir(tmp_path / "joint")) == ["spm.model", "spm.vocab"]
    separate = _tokenizer(toy_data, tmp_path / "separate", joint=False)
    assert separate.source is not separate.target
    # The source model knows only source words: a target word is split into pieces or unknown.
    assert len(separate.source.encode("s3")) == 1
    reloaded = Tokenizer.load(str(tmp_path / "separate"), joint=False)
    assert reloaded.encode_source(["s1 s4"]) == separate.encode_source(["s1 s4"])


def test_sample_lines_is_bounded_and_skips_empty_lines(tmp_path):
    path = tmp_path / "text"
    path.write_text("".join(f"line {i}\n" if i % 3 else "\n" for i in range(1000)))
    sample = sample_lines([str(path)], 50, seed=3)
    assert len(sample) == 50 and all(line.startswith("line") for line in sample)
    assert sample == sample_lines([str(path)], 50, seed=3)


@pytest.mark.parametrize("joint", [True, False])
def test_a_tokenizer_training_started_early_writes_the_models_that_training_here_writes(toy_data, tmp_path, joint):
    config = config_from_dict(toy_config(toy_data, **{"tokenizer.joint": joint}))
    here = Tokenizer.train(str(tmp_path / "here"), config.data, config.tokenizer, config.training.seed)
    started = EarlyTraining.start(str(tmp_path / "early"), config)
    early = Tokenizer.for_training(str(tmp_path / "early"), config, started=started)
    assert sorted(os.listdir(tmp_path / "early")) == sorted(os.listdir(tmp_path / "here"))
    for name in os.listdir(tmp_path / "here"):  # (a .model names the temporary file it was trained on)
        if name.endswith(".vocab"):  # every piece and its score
            assert (tmp_path / "early" / name).read_bytes() == (tmp_path / "here" / name).read_bytes(), name
    for mine, theirs in ((early.source, here.source), (early.target, here.target)):
        assert [mine.id_to_piece(i) for i in range(mine.get_piece_size())] == [
            theirs.id_to_piece(i) for i in range(theirs.get_piece_size())]
    assert early.encode_source(["s1 s4"]) == here.encode_source(["s1 s4"])
    assert not os.path.exists(started.folder)
    # A directory that has its models starts nothing; one started anyway is cancelled, its folder removed.
    assert EarlyTraining.start(str(tmp_path / "early"), config) is None
    again = EarlyTraining(config)
    Tokenizer.for_training(str(tmp_path / "early"), config, started=again)
    assert not os.path.exists(again.folder) and all(p.poll() is not None for p in again.processes)


def test_a_tokenizer_training_started_early_reports_its_error_in_one_line(tmp_path):
    letters = "abcdefghijklmnopqrstuvwxyzäöüß"
    for name in ("train.src", "train.tgt", "valid.src", "valid.tgt"):
        (tmp_path / name).write_text("".join(f"{letters[i:]}{letters[:i]}\n" for i in range(30)), encoding="utf-8")
    config = config_from_dict(toy_config(str(tmp_path), **{"tokenizer.vocab_size": 20, "tokenizer.model_type": "unigram"}))
    started = EarlyTraining.start(str(tmp_path / "model"), config)
    with pytest.raises(UserError, match="tokenizer.vocab_size: 20 is too small for the 31 different characters"):
        Tokenizer.for_training(str(tmp_path / "model"), config, started=started)
    assert not os.path.exists(started.folder) and not os.path.exists(tmp_path / "model" / "spm.model")
