import numpy as np
import pytest
import tensorflow as tf

from seq2seq.search import NEG_INF, Searcher, beam_search, best_tokens, length_limits, length_penalty
from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID


class ScriptedModel:
    """A stand-in for Seq2Seq: at step t, sentence b puts probability ``p`` on ``script[b][t]``
    (whatever the history), and spreads the rest evenly over the other tokens."""

    def __init__(self, script, vocab=20, p=0.9):
        self.script = tf.constant(script, tf.int32)  # [batch, steps]
        self.vocab, self.p = vocab, p
        self.encodes = 0

    def encode(self, source):
        self.encodes += 1
        batch = tf.shape(source)[0]
        return ({"script": self.script[:batch], "mask": tf.not_equal(source, PAD_ID)},
                {"t": tf.zeros([batch], tf.int32)})

    def step_weights(self, output_multiple=1):
        return {}

    def decode_step(self, token, state, memory, weights=None, beam=1):
        memory = tf.nest.map_structure(lambda x: tf.repeat(x, beam, axis=0), memory)  # a row per hypothesis
        t = state["t"]
        wanted = tf.gather(memory["script"], tf.minimum(t, self.script.shape[1] - 1), batch_dims=1)
        probs = tf.one_hot(wanted, self.vocab, on_value=self.p, off_value=(1 - self.p) / (self.vocab - 1))
        weights = tf.cast(memory["mask"], tf.float32)
        return tf.math.log(probs), {"t": t + 1}, weights / tf.reduce_sum(weights, -1, keepdims=True)

    def target_ids(self, indices):
        return indices  # its output scores every token


SOURCE = np.array([[5, 6, 7, EOS_ID], [5, 6, 7, EOS_ID], [5, EOS_ID, PAD_ID, PAD_ID]], np.int32)


def _search(model, beam=1, alpha=0.0, ratio=2.0, min_length=1, n_best=1, source=SOURCE):
    return beam_search(model, tf.constant(source), beam, alpha, ratio, min_length, n_best)


def test_eos_ends_decoding_for_that_sentence_only():
    script = [[5, EOS_ID, 9, 9, 9, 9, 9, 9], [6, 7, 8, 9, 10, 11, 12, 13], [4, 4, EOS_ID, 9, 9, 9, 9, 9]]
    result = _search(ScriptedModel(script))
    tokens = result.tokens.numpy()[:, 0]
    # Sentence 0 stops at its EOS and is padded afterwards; sentence 1 runs to its limit (2 × 4 = 8).
    assert tokens[0].tolist() == [5, EOS_ID] + [PAD_ID] * 6
    assert tokens[1].tolist() == [6, 7, 8, 9, 10, 11, 12, 13]
    assert tokens[2].tolist() == [4, 4, EOS_ID] + [PAD_ID] * 5
    assert result.lengths.numpy()[:, 0].tolist() == [2, 8, 3]
    np.testing.assert_allclose(result.log_probs.numpy()[:, 0], np.log(0.9) * np.array([2, 8, 3]), rtol=1e-5)
    attention = result.attention.numpy()[:, 0]
    assert attention.shape == (3, 8, 4)
    np.testing.assert_allclose(attention[0, :2].sum(-1), 1.0, rtol=1e-5)
    assert np.all(attention[0, 2:] == 0.0) and np.all(attention[2, 3:] == 0.0)


def test_loop_ends_when_every_sentence_has_finished():
    script = [[EOS_ID] * 8, [4, EOS_ID] + [9] * 6, [EOS_ID] * 8]
    assert _search(ScriptedModel(script)).tokens.shape[-1] == 2
    # With beams, a sentence is done once its best finished hypothesis cannot be beaten by the
    # hypotheses still open (here at p = 0.1 / 19 per token): no step runs past the last EOS.
    result = _search(ScriptedModel(script), beam=3)
    assert result.tokens.shape[-1] == 2 and result.lengths.numpy()[:, 0].tolist() == [1, 2, 1]


def test_length_limit_is_ratio_of_source_length_with_a_minimum():
    assert length_limits(tf.constant(SOURCE), 1.5, 1).numpy().tolist() == [6, 6, 3]
    assert length_limits(tf.constant(SOURCE), 1.5, 5).numpy().tolist() == [6, 6, 5]
    result = _search(ScriptedModel([[9] * 8] * 3), beam=3, ratio=1.5)
    assert result.lengths.numpy().max(axis=1).tolist() == [6, 6, 3]
    assert np.all(result.tokens.numpy() != EOS_ID)  # cut by the limit, not ended


def test_gnmt_length_penalty():
    np.testing.assert_allclose(length_penalty(tf.constant([1, 7]), 0.6).numpy(),
                               [1.0, (12 / 6) ** 0.6], rtol=1e-6)
    assert length_penalty(tf.constant(9), 0.0).numpy() == 1.0


def test_finished_hypothesis_is_not_extended_and_beam_keeps_n_distinct_best():
    # EOS is likely at step 1, but the other hypotheses continue; the finished one stays as it was.
    script = [[5, EOS_ID, 7, EOS_ID, 9, 9, 9, 9]] * 3
    result = _search(ScriptedModel(script, p=0.6), beam=4, n_best=4)
    tokens, scores = result.tokens.numpy()[0], result.scores.numpy()[0]
    best = tokens[0][tokens[0] != PAD_ID].tolist()
    assert best == [5, EOS_ID]
    finished = [tuple(row[row != PAD_ID]) for row in tokens]
    assert len(set(finished)) == 4  # distinct hypotheses
    assert all(EOS_ID not in h[:-1] for h in finished)  # nothing continues past its EOS
    assert list(scores) == sorted(scores, reverse=True) and scores[-1] > NEG_INF / 2


def test_beam_finds_a_better_hypothesis_than_greedy():
    """Greedy takes the locally best token; the beam finds the path with the higher total probability."""

    class TwoPaths:
        target_ids = ScriptedModel.target_ids

        # Step 0: token 4 (0.6) or 5 (0.4). After 4: flat over 10 tokens; after 5: EOS with 0.9.
        def encode(self, source):
            batch = tf.shape(source)[0]
            return {"mask": tf.not_equal(source, PAD_ID)}, {"prev": tf.fill([batch], BOS_ID)}

        def step_weights(self, output_multiple=1):
            return {}

        def decode_step(self, token, state, memory, weights=None, beam=1):
            memory = tf.nest.map_structure(lambda x: tf.repeat(x, beam, axis=0), memory)  # a row per hypothesis
            vocab = 10
            first = tf.math.log(tf.constant([1e-6] * 4 + [0.6, 0.4 - 6e-6] + [1e-6] * 4))
            after_4 = tf.fill([vocab], tf.math.log(0.1))
            after_5 = tf.math.log(tf.constant([1e-6] * 3 + [0.9] + [0.1 / 6 - 1e-7] * 6))
            rows = tf.where(tf.equal(token, BOS_ID)[:, None], first[None],
                            tf.where(tf.equal(token, 5)[:, None], after_5[None], after_4[None]))
            rows = tf.where(tf.equal(token, EOS_ID)[:, None], after_4[None], rows)
            weights = tf.cast(memory["mask"], tf.float32)
            return rows, {"prev": token}, weights / tf.reduce_sum(weights, -1, keepdims=True)

    source = SOURCE[:1]
    greedy = _search(TwoPaths(), beam=1, source=source)
    beam = _search(TwoPaths(), beam=2, source=source)
    assert greedy.tokens.numpy()[0, 0, 0] == 4
    assert beam.tokens.numpy()[0, 0, :2].tolist() == [5, EOS_ID]
    assert beam.log_probs.numpy()[0, 0] > greedy.log_probs.numpy()[0, 0]


def test_searcher_encodes_once_and_compiles_once_for_all_shapes():
    model = ScriptedModel([[4, EOS_ID] + [9] * 6] * 3)
    searcher = Searcher(model, 3, 0.6, 2.0, 1)
    searcher(SOURCE)
    searcher(SOURCE[:2, :3])
    searcher(SOURCE[:1])
    assert model.encodes == 1  # one trace; encode runs once per batch inside the graph
    assert searcher._search.experimental_get_tracing_count() == 1
    with pytest.raises(ValueError):
        Searcher(model, 2, 0.6, 2.0, 1, n_best=3)


def test_a_sentence_that_is_done_leaves_the_loop():
    class Counting(ScriptedModel):
        def __init__(self, script):
            super().__init__(script)
            self.rows = tf.Variable(0)

        def decode_step(self, token, state, memory, weights=None, beam=1):
            memory = tf.nest.map_structure(lambda x: tf.repeat(x, beam, axis=0), memory)  # a row per hypothesis
            self.rows.assign_add(tf.shape(token)[0])
            return super().decode_step(token, state, memory)

    # Sentence 0 ends at step 1, sentence 2 at step 2, sentence 1 runs to its limit of 8 steps.
    model = Counting([[5, EOS_ID] + [9] * 6, [6, 7, 8, 9, 10, 11, 12, 13], [4, 4, EOS_ID] + [9] * 5])
    result = _search(model, beam=2)
    assert model.rows.numpy() == 2 * (3 + 3 + 2 + 5)  # beam 2: 3 sentences for 2 steps, 2 for 1, then 1
    assert result.lengths.numpy()[:, 0].tolist() == [2, 8, 3]


@pytest.mark.parametrize("attention", [True, False])
def test_each_sentence_gets_the_translation_it_gets_alone(attention):
    from seq2seq.model import Seq2Seq

    model = Seq2Seq(30, 30, embedding_dim=16, units=16)
    model.build_weights()
    rng = np.random.default_rng(3)
    rows = [list(rng.integers(4, 30, size=n)) + [EOS_ID] for n in (2, 7, 4, 1, 5)]
    source = np.array([row + [PAD_ID] * (8 - len(row)) for row in rows], np.int32)
    together = beam_search(model, tf.constant(source), 3, 0.6, 1.5, 1, keep_attention=attention)
    for i, row in enumerate(rows):
        alone = beam_search(model, tf.constant([row], tf.int32), 3, 0.6, 1.5, 1, keep_attention=attention)
        length = alone.tokens.shape[-1]
        np.testing.assert_array_equal(together.tokens[i, :, :length], alone.tokens[0])
        assert np.all(together.tokens[i, :, length:] == PAD_ID)
        np.testing.assert_allclose(together.scores[i], alone.scores[0], rtol=1e-5)
        np.testing.assert_array_equal(together.lengths[i], alone.lengths[0])


@pytest.mark.parametrize("vocab", [8000, 1000, 130, 7])  # whole blocks, a padded last block, narrow
@pytest.mark.parametrize("k", [1, 5, 10])
def test_best_tokens_are_top_k_of_the_log_softmax(vocab, k):
    logits = tf.constant(np.random.default_rng(vocab + k).normal(0, 4, [37, vocab]), tf.float32)
    log_probs, tokens = best_tokens(logits, k, block=64)
    want_values, want_tokens = tf.math.top_k(tf.nn.log_softmax(logits), min(k, vocab))
    np.testing.assert_array_equal(tokens.numpy(), want_tokens.numpy())
    np.testing.assert_allclose(log_probs.numpy(), want_values.numpy(), atol=1e-5)


def test_best_tokens_break_ties_by_the_lowest_token_as_top_k_does():
    logits = np.zeros([2, 640], np.float32)
    logits[0, [600, 3, 200, 70]] = 5.0  # four tied maxima in four blocks; the lowest three win
    logits[1, [65, 64, 600]] = [1.0, 2.0, 2.0]
    _, tokens = best_tokens(tf.constant(logits), 3, block=64)
    assert tokens.numpy().tolist() == [[3, 70, 200], [64, 600, 65]]
