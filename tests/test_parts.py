"""The training step that computes a batch in parts at once (seq2seq/parts.py)."""

import json
import os
import subprocess
import sys
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT, toy_config
from seq2seq.config import ConfigError, config_from_dict
from seq2seq.evaluation import Evaluator
from seq2seq.model import Seq2Seq
from seq2seq.optimization import sequence_loss
from seq2seq.parts import PartsStep, choose_parts
from seq2seq.runtime import share_cores
from seq2seq.training import Trainer

# Five sentence pairs of different lengths, padded: each part has padding columns to trim.
SOURCE = tf.constant([[4, 5, 6, 7, 3], [8, 9, 3, 0, 0], [5, 3, 0, 0, 0], [6, 7, 8, 3, 0], [9, 4, 3, 0, 0]])
TARGET = tf.constant([[5, 6, 3, 0], [7, 8, 9, 3], [4, 3, 0, 0], [6, 3, 0, 0], [8, 7, 3, 0]])


def _model(dropout, seed=7):
    keras.utils.set_random_seed(seed)
    model = Seq2Seq(12, 11, embedding_dim=8, units=8, dropout=dropout, word_dropout=dropout / 2)
    model.build_weights()
    return model


def _weights(model):
    return [v.numpy() for v in model.trainable_variables]


@pytest.mark.parametrize("rdrop", [0.0, 1.0])
def test_two_parts_make_the_update_of_the_whole_batch(rdrop):
    parted, whole = _model(0.0), _model(0.0)
    step = PartsStep(parted, keras.optimizers.SGD(0.5), 2, 0.1, clip_norm=0.05, rdrop=rdrop)
    loss, tokens = step(SOURCE, TARGET)

    optimizer = keras.optimizers.SGD(0.5)
    with tf.GradientTape() as tape:
        loss_sum, expected_tokens = sequence_loss(whole, SOURCE, TARGET, True, 0.1, rdrop)
        expected_loss = loss_sum / expected_tokens
    # Dense: the norm of an embedding's lookups (IndexedSlices) would count a row's repeats apart.
    gradients = [tf.convert_to_tensor(g) for g in tape.gradient(expected_loss, whole.trainable_variables)]
    gradients, _ = tf.clip_by_global_norm(gradients, 0.05)
    optimizer.apply_gradients(zip(gradients, whole.trainable_variables))

    assert tokens.numpy() == expected_tokens.numpy() == 14
    np.testing.assert_allclose(loss.numpy(), expected_loss.numpy(), rtol=1e-5)
    for got, expected in zip(_weights(parted), _weights(whole)):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert not np.allclose(_weights(parted)[0], _weights(_model(0.0))[0])  # the update moved the weights


def _part_gradients(model, seed):
    """Made-up gradients of one part, of the types a part's function returns: dense for dense
    variables, a few rows (one of them twice) for the embeddings' lookups."""
    rng = np.random.default_rng(seed)
    gradients = []
    for variable in model.trainable_variables:
        if "embeddings" in variable.path:
            rows = tf.constant([1, 3, 1, 5], tf.int32)
            values = tf.constant(rng.normal(size=[4, variable.shape[1]]), tf.float32)
            gradients.append(tf.IndexedSlices(values, rows, tf.constant(variable.shape)))
        else:
            gradients.append(tf.constant(rng.normal(size=variable.shape), tf.float32))
    return gradients


@pytest.mark.parametrize("clip_norm", [0.5, 1e6])
def test_the_update_scales_sums_and_clips_as_the_dense_gradients_would(clip_norm):
    model = _model(0.0)
    before = _weights(model)
    step = PartsStep(model, keras.optimizers.SGD(1.0), 2, 0.0, clip_norm=clip_norm)
    parts = [_part_gradients(model, seed) for seed in (1, 2)]
    assert sum(isinstance(g, tf.IndexedSlices) for g in parts[0]) == 2  # the source and target embeddings
    loss, tokens = step._apply(parts, [tf.constant(6.0), tf.constant(9.0)], [tf.constant(4.0), tf.constant(6.0)])
    assert tokens.numpy() == 10 and loss.numpy() == pytest.approx(1.5)

    summed = [(tf.convert_to_tensor(a) + tf.convert_to_tensor(b)) / 10.0 for a, b in zip(*parts)]
    expected, norm = tf.clip_by_global_norm(summed, clip_norm)
    assert (norm.numpy() > clip_norm) == (clip_norm == 0.5)
    for got, old, gradient in zip(_weights(model), before, expected):
        np.testing.assert_allclose(old - got, gradient.numpy(), rtol=1e-5, atol=1e-7)


def test_a_gradient_that_is_not_finite_makes_the_update_nan_as_clipping_does():
    model = _model(0.0)
    step = PartsStep(model, keras.optimizers.SGD(1.0), 2, 0.0, clip_norm=1.0)
    parts = [_part_gradients(model, seed) for seed in (1, 2)]
    parts[1][-1] = parts[1][-1] + np.inf
    step._apply(parts, [tf.constant(1.0)] * 2, [tf.constant(1.0)] * 2)
    for variable in model.trainable_variables:  # every gradient's values are NaN (the loss stops training)
        weights = variable.numpy()
        assert np.isnan(weights[[1, 3, 5]] if "embeddings" in variable.path else weights).all()


def test_a_one_row_batch_is_one_part():
    model = _model(0.4)
    step = PartsStep(model, keras.optimizers.SGD(0.1), 2, 0.0, clip_norm=1.0)
    loss, tokens = step(SOURCE[:1], TARGET[:1])
    assert tokens.numpy() == 3 and np.isfinite(loss.numpy())
    counters = [[int(state.numpy()[1]) for state in states] for states in step.states]
    assert any(counters[0]) and not any(counters[1])  # the second part never drew: it never ran


def test_tracing_before_the_first_batch_serves_the_steps_that_follow():
    model, optimizer = _model(0.0), keras.optimizers.Adam(0.01)
    optimizer.build(model.trainable_variables)  # as the trainer builds it
    step = PartsStep(model, optimizer, 2, 0.1, clip_norm=1.0)
    assert not step.traced
    step.trace()
    assert step.traced
    assert step._update.experimental_get_tracing_count() == step._part_gradients.experimental_get_tracing_count() == 1
    for _ in range(2):
        step(SOURCE, TARGET)
    # The traces were the ones: the update's, and the parts' function's for both parts.
    assert step._update.experimental_get_tracing_count() == step._part_gradients.experimental_get_tracing_count() == 1
    gradients = step.part(0)(SOURCE, TARGET)[0]  # the embeddings' stay their looked-up rows
    assert [isinstance(g, tf.IndexedSlices) for g in gradients].count(True) == 2


def test_parts_draw_their_own_dropout_masks_and_runs_repeat():
    step = PartsStep(_model(0.4), keras.optimizers.SGD(0.1), 2, 0.0, clip_norm=1.0)
    # The same sentences through each part's function: different masks, different losses.
    first, second = (step.part(k)(SOURCE, TARGET)[1].numpy() for k in (0, 1))
    assert first != pytest.approx(second, rel=1e-4)
    # Each part's generators advanced their own counters, and no other part's.
    counters = [[int(state.numpy()[1]) for state in states] for states in step.states]
    assert any(c > 0 for c in counters[0]) and counters[0] == counters[1]
    # Without dropout both parts compute the same.
    plain = PartsStep(_model(0.0), keras.optimizers.SGD(0.1), 2, 0.0, clip_norm=1.0)
    assert plain.part(0)(SOURCE, TARGET)[1].numpy() == pytest.approx(
        plain.part(1)(SOURCE, TARGET)[1].numpy(), rel=1e-6)

    def run():
        model = _model(0.4, seed=3)
        step = PartsStep(model, keras.optimizers.Adam(0.01), 2, 0.1, clip_norm=1.0)
        losses = [float(step(SOURCE, TARGET)[0]) for _ in range(3)]
        return losses, _weights(model)

    (losses_a, weights_a), (losses_b, weights_b) = run(), run()
    assert losses_a == losses_b and len(set(losses_a)) == 3
    for a, b in zip(weights_a, weights_b):
        np.testing.assert_array_equal(a, b)


def test_training_in_two_parts_follows_the_one_part_training(toy_data, tmp_path, monkeypatch):
    """The toy task, 40 steps without dropout from the same seed: the same losses (up to the
    order of floating-point sums) in one part and in two."""
    losses, warm_ups = {}, []
    warm_up = Evaluator.warm_up
    monkeypatch.setattr(Evaluator, "warm_up", lambda self: warm_ups.append(threading.current_thread().name)
                        or warm_up(self))
    for parts in (1, 2):
        values = toy_config(toy_data, **{"training.max_steps": 40, "training.validate_every": 40,
                                         "training.log_every": 10, "training.parallel_parts": parts})
        model_dir = str(tmp_path / f"parts{parts}")
        trainer = Trainer(config_from_dict(values), model_dir)
        trainer.train()
        assert isinstance(trainer.train_step, PartsStep) == (parts == 2)
        # In parts, the validation compiles in a thread of its own while the first steps train.
        assert [name.split("_")[0] for name in warm_ups] == (["validation-warm-up"] if parts == 2 else [])
        with open(os.path.join(model_dir, "training.jsonl")) as f:
            losses[parts] = [json.loads(line)["loss"] for line in f]
        assert ("each batch computed in 2 parts" in open(os.path.join(model_dir, "train.log")).read()) == (parts == 2)
    assert len(losses[1]) == 4 and losses[1][-1] < losses[1][0] - 1.0  # it learned
    np.testing.assert_allclose(losses[2], losses[1], rtol=2e-3)


def test_parallel_parts_choice_and_config_errors(toy_data, monkeypatch):
    values = toy_config(toy_data)
    assert choose_parts(config_from_dict(values, ["training.parallel_parts=3"]).training) == 3
    assert choose_parts(config_from_dict(values, ["training.distribution=mirrored"]).training) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert choose_parts(config_from_dict(values).training) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert choose_parts(config_from_dict(values).training) == 2
    with pytest.raises(ConfigError, match="training.parallel_parts.*non-negative"):
        config_from_dict(values, ["training.parallel_parts=-1"])
    with pytest.raises(ConfigError, match="training.parallel_parts.*distribution=none"):
        config_from_dict(values, ["training.parallel_parts=2", "training.distribution=mirrored"])
    with pytest.raises(ConfigError, match="training.parallel_parts.*mixed_precision"):
        config_from_dict(values, ["training.parallel_parts=2", "training.mixed_precision=true"])


def test_share_cores_sets_the_intra_op_threads_before_the_runtime_starts(monkeypatch):
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "3")
    assert share_cores(2) == 3  # the variable decides
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS")
    tf.constant(1.0) + 1.0  # the runtime has started: its threads stay
    assert share_cores(2) is None
    # In a new process: 4 usable cores shared 2 ways give 2 threads each, 1 core gives 1.
    code = ("import os, sys; os.sched_getaffinity = lambda pid: set(range(int(sys.argv[1])));"
            "from seq2seq.runtime import import_tensorflow, share_cores; tf = import_tensorflow();"
            "print(share_cores(2), tf.config.threading.get_intra_op_parallelism_threads())")
    env = {k: v for k, v in os.environ.items() if k != "TF_NUM_INTRAOP_THREADS"}
    for cores, expected in (("4", "2 2"), ("1", "1 1")):
        result = subprocess.run([sys.executable, "-c", code, cores], capture_output=True, text=True, cwd=ROOT,
                                env=env, timeout=300)
        assert result.stdout.split() == expected.split(), result.stderr
