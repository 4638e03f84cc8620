"""The side-by-side benchmark's parts that run without JoeyNMT: its config, log parsing, figures."""

import json

import pytest
import yaml

from seq2seq import peer


def test_joeynmt_config_is_the_reference_architecture_for_one_epoch(tmp_path):
    config = yaml.safe_load(peer.JOEYNMT_CONFIG.format(work=tmp_path, data="/data", vocab="/v.txt", trg_vocab="/t.txt",
                                                       spm="/s.model", batch=peer.BATCH_SENTENCES))
    encoder, decoder = config["model"]["encoder"], config["model"]["decoder"]
    assert (encoder["rnn_type"], encoder["hidden_size"], encoder["bidirectional"], encoder["dropout"]) == (
        "gru", 256, True, 0.3)
    assert (decoder["hidden_size"], decoder["input_feeding"], decoder["attention"]) == (256, True, "bahdanau")
    assert config["training"]["batch_size"] == config["testing"]["batch_size"] == 64
    assert (config["training"]["epochs"], config["testing"]["beam_size"], config["testing"]["beam_alpha"]) == (
        1, 5, 1.0)
    assert config["training"]["validation_freq"] > 29_000 // 64  # no validation inside the epoch
    assert config["data"]["src"]["tokenizer_cfg"]["model_file"] == "/s.model"
    assert (config["data"]["src"]["voc_file"], config["data"]["trg"]["voc_file"]) == ("/v.txt", "/t.txt")


def test_joeynmt_target_vocabulary_is_our_output_vocabulary(tmp_path):
    model_dir, work = tmp_path / "ours0", tmp_path / "joeynmt0"
    model_dir.mkdir()
    work.mkdir()
    (model_dir / "spm.vocab").write_text("<pad>\t0\n<unk>\t0\n<s>\t0\n</s>\t0\n▁a\t-1\n▁b\t-2\n▁c\t-3\n",
                                         encoding="utf-8")
    spm = str(model_dir / "spm.model")
    vocab, trg_vocab = peer.joeynmt_vocabularies(spm, str(work))
    assert vocab == trg_vocab
    assert open(vocab, encoding="utf-8").read().split() == ["<unk>", "<pad>", "<s>", "</s>", "▁a", "▁b", "▁c"]
    (model_dir / "output_vocabulary.txt").write_text("0\t<pad>\n1\t<unk>\n2\t<s>\n3\t</s>\n6\t▁c\n",
                                                     encoding="utf-8")
    vocab, trg_vocab = peer.joeynmt_vocabularies(spm, str(work))
    assert open(vocab, encoding="utf-8").read().split() == ["<unk>", "<pad>", "<s>", "</s>", "▁a", "▁b", "▁c"]
    assert open(trg_vocab, encoding="utf-8").read().split() == ["<unk>", "<pad>", "<s>", "</s>", "▁c"]


def test_steady_rates_skip_the_warm_up_steps_of_both_logs(tmp_path):
    joey = tmp_path / "joey.log"
    joey.write_text("".join(
        f"2026-12-03 10:00:00 - INFO - joeynmt.training - Epoch   1, Step: {step:8d}, Batch Loss:     4.123456, "
        f"Batch Acc: 0.100000, Tokens per Sec: {rate:8d}, Lr: 0.001000\n"
        for step, rate in ((50, 100), (100, 200), (150, 1600), (200, 1700), (250, 1650))))
    assert peer._steady_rate(peer._JOEY_RATE, joey) == 1650
    assert peer._steps(peer._JOEY_RATE, joey) == 250
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "training.jsonl").write_text("".join(
        json.dumps({"step": step, "epoch": 1, "loss": 5.1, "target_tokens_per_sec": rate}) + "\n"
        for step, rate in ((50, 900.0), (100, 1000.0), (150, 5100.0), (200, 5300.0))))
    assert peer.steady_rates(ours) == [5100.0, 5300.0]


def test_summary_takes_medians_and_ratios():
    def run(rate, epoch, translate):
        return {"train_tokens_per_sec": rate, "epoch_wall_sec": epoch, "train_steps": 446,
                "translate_4000_wall_sec": translate, "output_words": 50_000}

    results = peer.summarize({"ours": [run(5000, 100, 20), run(6000, 90, 25), run(5500, 95, 30)],
                              "joeynmt": [run(1600, 300, 50), run(1700, 310, 55), run(1650, 290, 60)]})
    assert results["medians"]["ours"]["train_tokens_per_sec"] == 5500
    assert results["speedup"] == pytest.approx({"train_tokens_per_sec": 5500 / 1650, "epoch_wall_sec": 300 / 95,
                                                "translate_4000_wall_sec": 55 / 25, "output_words_per_sec": 55 / 25})
    assert results["repeats"] == 3 and results["cpu"]["model"] and results["cpu"]["cores"] >= 1
    assert set(results["cpu"]["flags"]) <= set(peer.CPU_FLAGS)
