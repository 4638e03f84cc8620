"""The arithmetic count of seq2seq/flops.py, checked against the weights of the built model."""

import dataclasses
import math

import numpy as np
import pytest

from seq2seq.config import ModelConfig
from seq2seq.flops import corpus_lengths, forward_flops_per_token, matmul_peak, training_flops_per_token
from seq2seq.model import Seq2Seq

SOURCE_VOCAB, TARGET_VOCAB = 50, 60
CONFIGS = [
    ModelConfig(cell="gru", embedding_dim=8, units=16, bidirectional=True, input_feeding=True),
    ModelConfig(cell="lstm", embedding_dim=8, units=16, encoder_layers=2, decoder_layers=2, bidirectional=False,
                input_feeding=False, attention_units=12),
    ModelConfig(cell="rnn", embedding_dim=8, units=16, decoder_layers=2, tie_embeddings=True),
    ModelConfig(cell="gru", embedding_dim=16, units=16, tie_embeddings=True, encoder_layers=2),
]


def kernel_sizes(model):
    """The weights that one token meets once in a matrix product, by part: every kernel but the
    bridge's (once a sentence) and the attention's energy vector (once per source position), and
    the target embeddings when the output layer is tied to them."""
    sizes = {"encoder": 0, "decoder": 0, "output": 0}
    for variable in model.trainable_variables:
        path = variable.path
        if "bridge" in path or "energy" in path or path.endswith("bias"):
            continue
        size = int(np.prod(variable.shape))
        if "output" in path:
            sizes["output"] += size
        elif path.startswith(model.name + "/encoder") or "key_projection" in path:
            sizes["encoder"] += 0 if path.endswith("embeddings") else size
        elif path.endswith("embeddings"):
            sizes["output"] += size if model.settings["tie_embeddings"] else 0
        else:
            sizes["decoder"] += size
    return sizes


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.cell}-tied{c.tie_embeddings}")
def test_forward_count_is_twice_the_weights_each_token_meets(config):
    model = Seq2Seq.from_config_section(config, SOURCE_VOCAB, TARGET_VOCAB)
    counts = forward_flops_per_token(config, TARGET_VOCAB, source_per_target=1.0, attended_source_length=0.0)
    assert {part: counts[part] for part in ("encoder", "decoder", "output")} == {
        part: 2 * size for part, size in kernel_sizes(model).items()}
    assert counts["total"] == counts["encoder"] + counts["decoder"] + counts["output"]


def test_attention_and_encoder_terms_scale_with_the_source():
    config = CONFIGS[0]
    base = forward_flops_per_token(config, TARGET_VOCAB, 1.0, 0.0)
    longer = forward_flops_per_token(config, TARGET_VOCAB, 1.5, 10.0)
    attention_units, value_dim = config.units, 2 * config.units
    assert longer["decoder"] - base["decoder"] == 2 * 10.0 * (attention_units + value_dim)
    assert longer["encoder"] == pytest.approx(1.5 * base["encoder"])
    assert longer["output"] == base["output"]


def test_training_is_three_forward_passes():
    config = dataclasses.replace(CONFIGS[1], units=32)
    assert training_flops_per_token(config, TARGET_VOCAB, 1.2, 7.0) == 3 * forward_flops_per_token(
        config, TARGET_VOCAB, 1.2, 7.0)["total"]


def test_corpus_lengths():
    pairs = [([1, 2, 3], [4, 5]), ([1], [4, 5, 6, 7])]  # 4 source, 6 target tokens
    source_per_target, attended = corpus_lengths(pairs)
    assert source_per_target == pytest.approx(4 / 6)
    assert attended == pytest.approx((3 * 2 + 1 * 4) / 6)


def test_matmul_peak_is_a_rate():
    rate = matmul_peak(size=128, repeats=2, rounds=2)
    assert math.isfinite(rate) and 0.01 < rate < 1e5
