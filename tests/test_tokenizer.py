import os

from seq2seq.config import DataConfig, TokenizerConfig
from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, sample_lines


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
