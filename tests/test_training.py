import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import run_main, shipped_sections, toy, toy_config, write_yaml
from seq2seq.checkpoints import average_weights
from seq2seq.config import config_from_dict, load_config
from seq2seq.dataset import decoder_inputs
from seq2seq.evaluation import Evaluator
from seq2seq.model import Seq2Seq
from seq2seq.model_dir import TRAINING_HISTORY, load_model, read_history
from seq2seq.optimization import FusedAdam, LearningRate, cross_entropy, sequence_loss
from seq2seq.profiling import SEARCH_GROUPS, _cuts, profile_search, profile_step, search_op_groups
from seq2seq import training
from seq2seq.training import Trainer
from seq2seq.translate import Translator


def test_loss_skips_padding_and_matches_keras_smoothed_cross_entropy():
    model = Seq2Seq(12, 9, embedding_dim=8, units=8)
    model.build_weights()
    source = tf.constant([[4, 5, 6, 3], [7, 3, 0, 0]])
    target = tf.constant([[4, 5, 3, 0], [6, 3, 0, 0]])
    loss, tokens = sequence_loss(model, source, target, label_smoothing=0.1)
    assert tokens.numpy() == 5
    logits = model((source, decoder_inputs(target)))
    reference = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1, reduction=None)
    per_token = reference(tf.one_hot(target, 9), logits).numpy()
    np.testing.assert_allclose(loss, per_token[target.numpy() != 0].sum(), rtol=1e-5)


def test_cross_entropy_matches_keras_on_any_shape():
    logits = tf.random.normal([3, 2, 11], seed=1) * 4
    labels = tf.constant([[1, 10], [0, 5], [7, 7]])
    reference = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.3, reduction=None)
    np.testing.assert_allclose(cross_entropy(labels, logits, 0.3), reference(tf.one_hot(labels, 11), logits),
                               rtol=1e-5)
    np.testing.assert_allclose(cross_entropy(tf.reshape(labels, [-1]), tf.reshape(logits, [6, 11]), 0.3),
                               tf.reshape(reference(tf.one_hot(labels, 11), logits), [-1]), rtol=1e-5)


@pytest.mark.parametrize("scale", [1.0, 300.0])  # 300: logits far apart, most probabilities underflow
def test_cross_entropy_loss_and_gradient_equal_the_fused_op_on_smoothed_targets(scale):
    logits = tf.random.normal([64, 500], seed=2) * scale
    labels = tf.random.uniform([64], 0, 500, tf.int32, seed=3)
    upstream = tf.random.uniform([64], seed=4)
    targets = tf.one_hot(labels, 500, on_value=0.9 + 0.1 / 500, off_value=0.1 / 500)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(logits)
        loss = cross_entropy(labels, logits, 0.1)
        want = tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-5 * scale)
    gradient = tape.gradient(loss, logits, output_gradients=upstream)
    np.testing.assert_allclose(gradient, tape.gradient(want, logits, output_gradients=upstream), atol=1e-6)
    assert np.all(np.isfinite(gradient))


def _rewinder(model):
    """A function that sets the model's dropout seed generators back to their states now."""
    generators = [layer.seed_generator for layer in model._flatten_layers()
                  if isinstance(getattr(layer, "seed_generator", None), keras.random.SeedGenerator)]
    states = [g.state.numpy() for g in generators]
    return lambda: [g.state.assign(state) for g, state in zip(generators, states)]


def test_rdrop_adds_the_symmetric_kl_of_two_dropout_passes_to_their_mean_cross_entropy():
    keras.utils.set_random_seed(3)
    model = Seq2Seq(12, 9, embedding_dim=8, units=8, dropout=0.4, word_dropout=0.2)
    model.build_weights()
    source = tf.constant([[4, 5, 6, 3], [7, 3, 0, 0], [8, 9, 3, 0]])
    target = tf.constant([[4, 5, 3, 0], [6, 3, 0, 0], [7, 8, 6, 3]])
    rewind = _rewinder(model)
    loss, tokens = sequence_loss(model, source, target, True, 0.1, rdrop=2.0)
    assert tokens.numpy() == 9  # the batch's own tokens, not the two copies'

    rewind()  # the same dropout draws again, on the copies' stacked rows
    twice, target_twice = tf.concat([source, source], 0), tf.concat([target, target], 0)
    attentional = model.attentional((twice, decoder_inputs(target_twice)), training=True)
    real = (target_twice != 0).numpy()
    logits = model.output_logits(tf.boolean_mask(attentional, real), training=True)
    logits = tf.scatter_nd(tf.where(real), logits, [6, 4, 9]).numpy()  # [rows, len, outputs] again
    first, second, mask = logits[:3], logits[3:], real[:3]
    smoothed = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1, reduction=None)
    cross_entropy_sum = sum(smoothed(tf.one_hot(target, 9), copy).numpy()[mask].sum() for copy in (first, second))
    p, q = tf.nn.softmax(first).numpy()[mask], tf.nn.softmax(second).numpy()[mask]
    kl = (p * np.log(p / q)).sum() + (q * np.log(q / p)).sum()
    assert kl > 1e-3  # the two copies drew different masks
    np.testing.assert_allclose(loss.numpy(), 0.5 * cross_entropy_sum + 0.25 * 2.0 * kl, rtol=1e-5)


def test_rdrop_without_dropout_is_the_plain_loss():
    model = Seq2Seq(12, 9, embedding_dim=8, units=8, dropout=0.4)
    model.build_weights()
    source = tf.constant([[4, 5, 6, 3], [7, 3, 0, 0]])
    target = tf.constant([[4, 5, 3, 0], [6, 3, 0, 0]])
    plain = sequence_loss(model, source, target, False, 0.1)
    np.testing.assert_allclose(sequence_loss(model, source, target, False, 0.1, rdrop=5.0), plain, rtol=1e-6)


def test_label_smoothing_spreads_mass_over_the_vocabulary():
    logits = tf.math.log(tf.constant([[[0.97, 0.01, 0.01, 0.01]]]))
    target = tf.constant([[1]])
    plain, smoothed = cross_entropy(target, logits, 0.0)[0, 0], cross_entropy(target, logits, 0.2)[0, 0]
    np.testing.assert_allclose(plain, -np.log(0.01), rtol=1e-5)
    expected = -(0.8 + 0.05) * np.log(0.01) - 0.05 * (np.log(0.97) + 2 * np.log(0.01))
    np.testing.assert_allclose(smoothed, expected, rtol=1e-5)


def test_tiny_model_learns_the_toy_task(trained_toy, toy_data):
    config, tokenizer, model = load_model(trained_toy)
    sources = open(f"{toy_data}/test.src").read().splitlines()
    references = open(f"{toy_data}/test.tgt").read().splitlines()
    assert not set(sources) & set(open(f"{toy_data}/train.src").read().splitlines())  # held out
    hypotheses = Translator(model, tokenizer, config.translate).translate(sources)
    exact = np.mean([h == r for h, r in zip(hypotheses, references)])
    assert exact >= 0.95, list(zip(hypotheses, references))[:5]
    assert hypotheses[0] == " ".join(toy.translate(sources[0].split()))


def test_layer_normalized_model_learns_the_toy_task(toy_data, tmp_path):
    model_dir = str(tmp_path / "model")
    Trainer(config_from_dict(toy_config(toy_data, **{"model.layer_norm": True})),
            model_dir).train()
    config, tokenizer, model = load_model(model_dir)
    assert config.model.layer_norm and model.decoder.norms[0] is not None
    sources = open(f"{toy_data}/test.src").read().splitlines()
    references = open(f"{toy_data}/test.tgt").read().splitlines()
    hypotheses = Translator(model, tokenizer, config.translate).translate(sources)
    exact = np.mean([h == r for h, r in zip(hypotheses, references)])
    assert exact >= 0.95, list(zip(hypotheses, references))[:5]


def test_a_model_trained_with_rdrop_learns_the_toy_task(toy_data, tmp_path, monkeypatch):
    """R-Drop in the one-part step (the parts' step: tests/test_parts.py), with dropout to act on."""
    weights = []  # the R-Drop weight of each traced loss
    monkeypatch.setattr(training, "sequence_loss", lambda *args: weights.append(args[5]) or sequence_loss(*args))
    model_dir = str(tmp_path / "model")
    Trainer(config_from_dict(toy_config(toy_data, **{"training.rdrop": 1.0, "model.dropout": 0.1,
                                                     "training.parallel_parts": 1})), model_dir).train()
    assert weights and set(weights) == {1.0}
    config, tokenizer, model = load_model(model_dir)
    sources = open(f"{toy_data}/test.src").read().splitlines()
    references = open(f"{toy_data}/test.tgt").read().splitlines()
    hypotheses = Translator(model, tokenizer, config.translate).translate(sources)
    assert np.mean([h == r for h, r in zip(hypotheses, references)]) >= 0.95, list(zip(hypotheses, references))[:5]


def test_validation_loss_is_the_token_mean_over_every_batch_computed_in_threads(trained_toy):
    config, tokenizer, model = load_model(trained_toy)
    evaluator = Evaluator(model, tokenizer, config)
    sums = [evaluator.loss_step(source, target) for source, target in evaluator.batches]
    assert len(sums) >= 3 and len({round(float(loss), 3) for loss, _ in sums}) >= 2
    loss, bleu, _ = evaluator.evaluate()
    assert loss == pytest.approx(sum(float(s) for s, _ in sums) / sum(float(n) for _, n in sums), rel=1e-6)
    assert bleu > 90
    evaluator.batches = []  # every validation pair longer than training.max_length: no loss to compile
    evaluator.warm_up()


def test_model_directory_holds_everything(trained_toy):
    names = set(os.listdir(trained_toy))
    assert {"config.yaml", "spm.model", "checkpoints", "best", "validation.jsonl", "train.log",
            "tensorboard"} <= names
    history = [json.loads(line) for line in open(os.path.join(trained_toy, "validation.jsonl"))]
    assert [h["step"] for h in history] == [200, 400, 600]
    assert {"loss", "bleu", "chrf", "best_bleu"} <= set(history[0])
    assert os.listdir(os.path.join(trained_toy, "tensorboard"))
    progress = read_history(trained_toy, TRAINING_HISTORY)  # one record per log line (log_every 100)
    assert [r["step"] for r in progress] == list(range(100, 601, 100))
    assert all(r["target_tokens_per_sec"] > 0 and r["epoch"] >= 1 for r in progress)
    assert progress[-1]["loss"] < progress[0]["loss"]


def test_resumed_run_continues_step_count_and_best_score(toy_data, tmp_path):
    model_dir = str(tmp_path / "model")
    values = toy_config(toy_data, **{"training.max_steps": 120, "training.validate_every": 60,
                                     "training.validation_beam_size": 3})
    first = Trainer(config_from_dict(values), model_dir)
    best = first.train()
    assert first.step == 120 and best > 0
    second = Trainer(config_from_dict(values, ["training.max_steps=180"]), model_dir)
    second.train()
    assert second.step == 180
    history = [json.loads(line) for line in open(os.path.join(model_dir, "validation.jsonl"))]
    assert [h["step"] for h in history] == [60, 120, 180]
    assert history[2]["best_bleu"] >= history[1]["best_bleu"] == pytest.approx(best, abs=0.01)
    log = open(os.path.join(model_dir, "train.log")).read()
    assert "resumed from" in log and "at step 120" in log
    # The optimizer state came back too: Adam's step counter continued.
    assert int(second.optimizer.iterations.numpy()) == 180
    # Running the finished command again does no more steps.
    third = Trainer(config_from_dict(values, ["training.max_steps=180"]), model_dir)
    third.train()
    assert third.step == 180


def test_a_run_stopped_within_an_epoch_goes_on_with_the_epochs_next_batch(toy_data, tmp_path):
    # Stopped after 5 batches of the first epoch and resumed, a run trains on the batches of an
    # uninterrupted run and ends with its weights; one that started the epoch over would train
    # on its first 5 batches twice.
    values = toy_config(toy_data, **{"training.max_steps": 12, "training.validate_every": 1000})
    whole = Trainer(config_from_dict(values), str(tmp_path / "whole"))
    whole.train()
    stopped_dir = str(tmp_path / "stopped")
    stopped = Trainer(config_from_dict(values, ["training.max_steps=5"]), stopped_dir)
    stopped.train()
    assert int(stopped.state.epoch.numpy()) == 0 and int(stopped.state.epoch_batches.numpy()) == 5
    resumed = Trainer(config_from_dict(values), stopped_dir)
    resumed.train()
    assert resumed.step == 12 and int(resumed.state.epoch_batches.numpy()) == 12
    assert "epoch 1 goes on after the 5 batches of it trained before" in open(
        os.path.join(stopped_dir, "train.log")).read()
    for ours, theirs in zip(resumed.model.weights, whole.model.weights):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=0, atol=1e-6, err_msg=ours.path)


def test_early_stopping_after_patience_validations(toy_data, tmp_path):
    values = toy_config(toy_data, **{"training.max_steps": 400, "training.validate_every": 20,
                                     "training.patience": 2, "training.learning_rate": 1e-9})
    trainer = Trainer(config_from_dict(values), str(tmp_path / "model"))
    trainer.train()
    assert trainer.step < 400
    assert trainer.stopping.bad == 2


def test_changing_the_model_of_an_existing_directory_is_refused(toy_data, tmp_path, trained_toy):
    from seq2seq.errors import UserError

    with pytest.raises(UserError, match=r"was trained with model\.units=64, not 32"):
        Trainer(config_from_dict(toy_config(toy_data, **{"model.units": 32})), trained_toy).train()


def test_learning_rate_decays_after_validations_without_improvement(toy_data, tmp_path):
    values = toy_config(toy_data, **{"training.max_steps": 100, "training.validate_every": 20, "training.patience": 10,
                                     "training.learning_rate": 1e-9, "training.lr_decay_factor": 0.5,
                                     "training.lr_decay_patience": 2, "training.min_learning_rate": 3e-10})
    model_dir = str(tmp_path / "model")
    trainer = Trainer(config_from_dict(values), model_dir)
    trainer.train()
    history = [json.loads(line) for line in open(os.path.join(model_dir, "validation.jsonl"))]
    # No validation beats the first (the rate is too small to change anything): the rate halves
    # after the 2nd and 4th validation without improvement (steps 60, 100), down to the floor.
    rates = [h["learning_rate"] for h in history]  # the rate each validation saw
    assert [h["step"] for h in history] == [20, 40, 60, 80, 100]
    assert rates == pytest.approx([1e-9, 1e-9, 1e-9, 5e-10, 5e-10], rel=1e-4)
    assert float(trainer.optimizer.learning_rate.numpy()) == pytest.approx(3e-10, rel=1e-4)
    # The decayed rate is part of the checkpoint: a resumed run keeps it.
    resumed = Trainer(config_from_dict(values, ["training.max_steps=120"]), model_dir)
    resumed.train()
    assert float(resumed.optimizer.learning_rate.numpy()) <= 3e-10 * 1.0001


def test_learning_rate_schedules_warm_up_and_decay():
    plateau = LearningRate("plateau", 1e-3, 1e-5, warmup_steps=10, total_steps=110)
    assert [float(plateau(step)) for step in (0, 4, 9, 50, 109)] == pytest.approx([1e-4, 5e-4, 1e-3, 1e-3, 1e-3])
    plateau.rate.assign(5e-4)  # what decay on plateau does
    assert float(plateau(50)) == pytest.approx(5e-4)
    cosine = LearningRate("cosine", 1e-3, 1e-5, warmup_steps=10, total_steps=110)
    expected = [1e-4, 1e-3, 1e-5 + (1e-3 - 1e-5) * 0.5, 1e-5, 1e-5]  # half-way down at step 60
    assert [float(cosine(step)) for step in (0, 9, 60, 110, 500)] == pytest.approx(expected, rel=1e-4)
    no_warmup = LearningRate("cosine", 1e-3, 1e-5, warmup_steps=0, total_steps=100)
    assert float(no_warmup(0)) == pytest.approx(1e-3)
    assert float(no_warmup(25)) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi / 4)), rel=1e-4)


def test_fused_adam_updates_like_keras_adam_and_checkpoints_the_same_moments(tmp_path):
    rng = np.random.default_rng(0)
    start = [rng.normal(size=(30, 8)).astype(np.float32), rng.normal(size=8).astype(np.float32)]
    weights = {name: [keras.Variable(w) for w in start] for name in ("keras", "fused")}
    optimizers = {"keras": keras.optimizers.Adam(LearningRate("plateau", 1e-2, 1e-4, 3, 100)),
                  "fused": FusedAdam(LearningRate("plateau", 1e-2, 1e-4, 3, 100))}
    for step in range(6):
        dense = [tf.constant(rng.normal(size=w.shape).astype(np.float32)) for w in start]
        # An embedding lookup's gradient (rows 3 and 7 of the first weight) takes Keras's path.
        sparse = tf.IndexedSlices(tf.constant(rng.normal(size=(2, 8)).astype(np.float32)), tf.constant([3, 7]),
                                  tf.constant([30, 8]))
        for name, optimizer in optimizers.items():
            optimizer.apply_gradients(zip([sparse if step == 4 else dense[0], dense[1]], weights[name]))
    for initial, keras_weight, fused_weight in zip(start, weights["keras"], weights["fused"]):
        assert not np.allclose(fused_weight.numpy(), initial)
        np.testing.assert_allclose(fused_weight.numpy(), keras_weight.numpy(), atol=1e-6)
    # The moments are Keras's variables: a checkpoint of the fused optimizer restores into Keras's Adam.
    path = tf.train.Checkpoint(optimizer=optimizers["fused"]).save(str(tmp_path / "ckpt"))
    restored = keras.optimizers.Adam(LearningRate("plateau", 1e-2, 1e-4, 3, 100))
    restored.build(weights["keras"])
    tf.train.Checkpoint(optimizer=restored).restore(path).assert_existing_objects_matched()
    for a, b in zip(restored.variables, optimizers["fused"].variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_cosine_schedule_reaches_the_floor_at_the_last_step_and_ignores_plateaus(toy_data, tmp_path):
    values = toy_config(toy_data, **{"training.max_steps": 100, "training.validate_every": 20, "training.patience": 10,
                                     "training.learning_rate": 1e-9, "training.lr_schedule": "cosine",
                                     "training.warmup_steps": 10, "training.min_learning_rate": 1e-10})
    model_dir = str(tmp_path / "model")
    Trainer(config_from_dict(values), model_dir).train()
    history = [json.loads(line) for line in open(os.path.join(model_dir, "validation.jsonl"))]
    # The rate each validation saw follows the cosine (no plateau halving although BLEU never improves).
    schedule = LearningRate("cosine", 1e-9, 1e-10, warmup_steps=10, total_steps=100)
    assert [h["step"] for h in history] == [20, 40, 60, 80, 100]
    assert [h["learning_rate"] for h in history] == pytest.approx([float(schedule(s)) for s in (20, 40, 60, 80, 100)],
                                                                  rel=1e-4)
    assert history[-1]["learning_rate"] == pytest.approx(1e-10, rel=1e-4)


def test_checkpoint_averaging_keeps_the_average_only_if_it_scores_better(toy_data, tmp_path):
    values = toy_config(toy_data, **{"training.max_steps": 240, "training.validate_every": 60,
                                     "training.average_checkpoints": 3})
    model_dir = str(tmp_path / "model")
    trainer = Trainer(config_from_dict(values), model_dir)
    best = trainer.train()
    history = [json.loads(line) for line in open(os.path.join(model_dir, "validation.jsonl"))]
    averaged = history[-1]
    assert averaged["averaged_steps"] == [120, 180, 240]
    singles = [h["bleu"] for h in history[:-1]]
    assert best == pytest.approx(max(singles + [averaged["bleu"]]), abs=0.01)
    assert averaged["kept"] == (averaged["bleu"] > max(singles))
    # The best model on disk is what the history says: re-score it.
    config, tokenizer, model = load_model(model_dir)
    sources = [line.rstrip("\n") for line in open(os.path.join(toy_data, "valid.src"))]
    references = [line.rstrip("\n") for line in open(os.path.join(toy_data, "valid.tgt"))]
    from seq2seq.translate import score

    hypotheses = Translator(model, tokenizer, config.translate, beam_size=1).translate(sources)
    assert score(hypotheses, references)[1].score == pytest.approx(best, abs=0.01)
    # The recorded average is the mean of the three saved models' weights: averaged again from the
    # files, it scores what the history says; kept, it is the best model on disk.
    _, _, average = load_model(model_dir)
    average_weights(average, [os.path.join(model_dir, "averaging", f"ckpt-{step}") for step in (120, 180, 240)])
    hypotheses = Translator(average, tokenizer, config.translate, beam_size=1).translate(sources)
    assert score(hypotheses, references)[1].score == pytest.approx(averaged["bleu"], abs=0.01)
    same = [np.allclose(a, b, atol=1e-6) for a, b in zip(average.get_weights(), model.get_weights())]
    assert all(same) == averaged["kept"]
    # The training state was restored after averaging: a resumed run continues from step 240.
    again = Trainer(config_from_dict(values, ["training.max_steps=300"]), model_dir)
    again.train()
    assert again.step == 300


def test_training_draws_learning_curves(trained_toy):
    from PIL import Image

    path = os.path.join(trained_toy, "learning_curves.png")
    with Image.open(path) as image:
        assert image.size == (1100, 400)
    history = [json.loads(line) for line in open(os.path.join(trained_toy, "validation.jsonl"))]
    assert all(h["train_loss"] > 0 for h in history)


def test_profile_times_every_part_and_the_old_loss_agrees_with_the_new(toy_data, tmp_path):
    config_path = str(tmp_path / "toy.yaml")
    write_yaml(config_path, toy_config(toy_data, **{"training.label_smoothing": 0.1}))
    figures = profile_step(str(tmp_path / "work"), config_path, num_batches=3, repeats=1, log=lambda _: None)
    assert len(figures["parts_ms"]) == 4 and figures["batches"] == 3 and figures["step_ms"] > 0
    assert figures["target_tokens"] > 0 and 0 < figures["target_padding_fraction"] < 1

    # The profile's "before" loss (every position, one-hot targets) is the same loss.
    model = Seq2Seq(20, 20, embedding_dim=8, units=8, dropout=0.0)
    model.build_weights()
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    cuts = _cuts(model, optimizer, load_config(config_path))
    source = tf.constant([[4, 5, 6, 3], [7, 3, 0, 0]])
    target = tf.constant([[4, 5, 3, 0], [6, 3, 0, 0]])
    np.testing.assert_allclose(cuts["output"](source, target)[0], cuts["dense_output"](source, target)[0], rtol=1e-5)
    before = [v.numpy() for v in model.trainable_variables]
    cuts["update"](source, target)
    assert all(not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables))


def test_average_weights_is_the_mean_of_the_checkpoints(tmp_path):
    model = Seq2Seq(12, 9, embedding_dim=8, units=8)
    model.build_weights()
    checkpoint, paths, saved = tf.train.Checkpoint(model=model), [], []
    for i in range(3):
        model.set_weights([np.full_like(w, i) + np.random.default_rng(i).normal(size=w.shape) for w in model.get_weights()])
        saved.append(model.get_weights())
        paths.append(checkpoint.save(str(tmp_path / "ckpt")))
    model.set_weights([np.zeros_like(w) for w in model.get_weights()])
    average_weights(model, paths)
    for averaged, *weights in zip(model.get_weights(), *saved):
        np.testing.assert_allclose(averaged, np.mean(weights, axis=0), atol=1e-6)



def test_search_profile_groups_every_part_of_a_beam_step(trained_toy, toy_data):
    lines = open(os.path.join(toy_data, "test.src"), encoding="utf-8").read().splitlines()
    figures = profile_search(trained_toy, lines, beam_size=3, log=lambda _: None)
    groups = figures["groups_ms"]
    assert figures["lines"] == len(lines) and figures["output_words"] > 0
    # The name scopes the profile groups by are where the search runs its ops.
    for name, _ in SEARCH_GROUPS:
        assert groups[name] > 0, (name, groups)
    assert groups["other"] < 0.25 * sum(groups[name] for name, _ in SEARCH_GROUPS), groups


def test_search_op_groups_sums_by_the_first_matching_scope():
    ops = [{"operation": "while/body/_1/while/output_projection_1/BiasAdd", "type": "_MklNativeFusedMatMul",
            "total_self_time": 3000.0},
           {"operation": "while/body/_1/while/select/Exp", "type": "Exp", "total_self_time": 1500.0},
           {"operation": "while/body/_1/while/recurrent_step/MatMul", "type": "MatMul", "total_self_time": 500.0},
           {"operation": "encoder_1/while/body/_2/encoder_1/while/recurrent_step/MatMul", "type": "MatMul",
            "total_self_time": 700.0},
           {"operation": "while/body/_1/while/GatherV2_3", "type": "GatherV2", "total_self_time": 250.0},
           {"operation": "Repeat_4/Tile", "type": "Tile", "total_self_time": 100.0},
           {"operation": "IDLE", "type": "IDLE", "total_self_time": 9000.0}]
    groups = search_op_groups(ops)
    names = [name for name, _ in SEARCH_GROUPS]
    assert groups[names[0]] == 0.7  # the encoder's recurrent step counts as the encoder
    assert groups[names[1]] == 3.0 and groups[names[2]] == 1.5 and groups[names[5]] == 0.5
    assert groups[names[6]] == 0.25 and groups["other"] == 0.1 and groups["idle"] == 9.0


@pytest.mark.parametrize("model", shipped_sections("model"))
def test_a_shipped_model_section_trains_validates_and_translates(toy_data, model, tmp_path):
    # The shipped model (its width, output vocabulary and bfloat16 settings as users run them) on
    # the toy task's data and tokenizer, through the command lines.
    values = toy_config(toy_data)
    values["model"] = model
    values["training"].update(max_steps=4, validate_every=2)
    model_dir = str(tmp_path / "model")
    result = run_main("train.py", "--config", write_yaml(tmp_path / "config.yaml", values), "--model-dir", model_dir)
    assert result.returncode == 0, result.stderr
    log = open(os.path.join(model_dir, "train.log")).read()
    assert "training done at step 4" in log and f"'units': {model['units']}" in log
    if model.get("output_vocabulary") == "observed":
        assert "output vocabulary:" in log and os.path.exists(os.path.join(model_dir, "output_vocabulary.txt"))
    result = run_main("translate.py", "--model", model_dir, "--beam-size", "3", stdin="s1 s2 s3\n\ns4 s5\n")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3 and result.stdout.splitlines()[1] == ""
