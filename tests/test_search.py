import numpy as np
import tensorflow as tf

from seq2seq.search import Searcher, greedy_search, length_limits
from seq2seq.tokenizer import EOS_ID, PAD_ID


class ScriptedModel:
    """A stand-in for Seq2Seq whose step t emits ``script[sentence][t]`` with probability 0.9."""

    def __init__(self, script, vocab=20):
        self.script = tf.constant(script, tf.int32)  # [batch, steps]
        self.vocab = vocab
        self.calls = 0

    def encode(self, source):
        self.calls += 1
        batch = tf.shape(source)[0]
        return {"source": source}, {"t": tf.zeros([batch], tf.int32)}

    def decode_step(self, token, state, memory):
        t = state["t"]
        script = self.script[: tf.shape(t)[0]]
        wanted = tf.gather(script, tf.minimum(t, self.script.shape[1] - 1), batch_dims=1)
        probs = tf.one_hot(wanted, self.vocab, on_value=0.9, off_value=0.1 / (self.vocab - 1))
        weights = tf.ones_like(tf.cast(memory["source"], tf.float32))
        return tf.math.log(probs), {"t": t + 1}, weights / tf.reduce_sum(weights, -1, keepdims=True)


SOURCE = np.array([[5, 6, 7, EOS_ID], [5, 6, 7, EOS_ID], [5, EOS_ID, PAD_ID, PAD_ID]], np.int32)


def test_eos_ends_decoding_for_that_sentence_only():
    script = [[5, EOS_ID, 9, 9, 9, 9, 9, 9], [6, 7, 8, 9, 10, 11, 12, 13], [4, 4, EOS_ID, 9, 9, 9, 9, 9]]
    tokens, scores, attention = greedy_search(ScriptedModel(script), tf.constant(SOURCE), 2.0, 1)
    tokens = tokens.numpy()
    # Sentence 0 stops at its EOS and is padded afterwards; sentence 1 runs to its limit (2 × 4 = 8).
    assert tokens[0].tolist() == [5, EOS_ID] + [PAD_ID] * 6
    assert tokens[1].tolist() == [6, 7, 8, 9, 10, 11, 12, 13]
    assert tokens[2].tolist() == [4, 4, EOS_ID] + [PAD_ID] * 5
    np.testing.assert_allclose(scores.numpy(), np.log(0.9) * np.array([2, 8, 3]), rtol=1e-5)
    assert attention.shape == (3, 8, 4)
    assert np.all(attention.numpy()[0, 2:] == 0.0) and np.all(attention.numpy()[2, 3:] == 0.0)


def test_loop_ends_when_every_sentence_has_finished():
    script = [[EOS_ID] * 8, [4, EOS_ID] + [9] * 6, [EOS_ID] * 8]
    tokens, _, _ = greedy_search(ScriptedModel(script), tf.constant(SOURCE), 2.0, 1)
    assert tokens.shape == (3, 2)


def test_length_limit_is_ratio_of_source_length_with_a_minimum():
    assert length_limits(tf.constant(SOURCE), 1.5, 1).numpy().tolist() == [6, 6, 3]
    assert length_limits(tf.constant(SOURCE), 1.5, 5).numpy().tolist() == [6, 6, 5]
    script = [[9] * 8] * 3
    tokens, _, _ = greedy_search(ScriptedModel(script), tf.constant(SOURCE), 1.5, 1)
    assert [int(np.sum(row != PAD_ID)) for row in tokens.numpy()] == [6, 6, 3]


def test_searcher_encodes_once_and_compiles_once_for_all_shapes():
    model = ScriptedModel([[4, EOS_ID] + [9] * 6] * 3)
    searcher = Searcher(model, 2.0, 1)
    searcher(SOURCE)
    searcher(SOURCE[:2, :3])
    searcher(SOURCE[:1])
    assert model.calls == 1  # traced once (encode runs inside the graph, once per batch)
    assert searcher._search.experimental_get_tracing_count() == 1
