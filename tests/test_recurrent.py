"""The recurrent layers run with their input projection out of the time loop compute what
Keras's own layers and cells compute."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from seq2seq import recurrent
from seq2seq.model import Seq2Seq

LAYERS = {"gru": keras.layers.GRU, "lstm": keras.layers.LSTM, "rnn": keras.layers.SimpleRNN}


@pytest.fixture
def inputs():
    keras.utils.set_random_seed(3)
    x = tf.random.normal([3, 5, 4])
    mask = tf.constant([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]) > 0
    return x, mask


@pytest.mark.parametrize("cell", sorted(LAYERS))
def test_bidirectional_layer_with_padding_matches_keras(cell, inputs):
    x, mask = inputs
    layer = keras.layers.Bidirectional(LAYERS[cell](8, return_sequences=True))
    expected = layer(x, mask=mask).numpy()
    cells = [layer.forward_layer.cell, layer.backward_layer.cell]
    outputs, _ = recurrent.run(cells, [recurrent.project_inputs(c, x) for c in cells], mask)
    real = mask.numpy()
    assert outputs.shape == (3, 5, 16)
    np.testing.assert_allclose(outputs.numpy()[real], expected[real], atol=1e-6)


@pytest.mark.parametrize("cell", sorted(LAYERS))
def test_layer_from_initial_state_matches_keras(cell, inputs):
    x, _ = inputs
    layer = LAYERS[cell](8, return_sequences=True, return_state=True)
    initial = [tf.random.normal([3, 8]) for _ in range(2 if cell == "lstm" else 1)]
    expected, *expected_states = layer(x, initial_state=initial)
    outputs, states = recurrent.run(layer.cell, recurrent.project_inputs(layer.cell, x), initial_states=initial)
    np.testing.assert_allclose(outputs.numpy(), expected.numpy(), atol=1e-6)
    for state, expected_state in zip(states, expected_states, strict=True):
        np.testing.assert_allclose(state.numpy(), expected_state.numpy(), atol=1e-6)


def test_padding_leaves_the_state_unchanged(inputs):
    x, mask = inputs
    layer = keras.layers.GRU(8, return_sequences=True)
    layer.build(x.shape)
    _, states = recurrent.run(layer.cell, recurrent.project_inputs(layer.cell, x), mask,
                              initial_states=[tf.zeros([3, 8])])
    short, _ = recurrent.run(layer.cell, recurrent.project_inputs(layer.cell, x[:, :1]),
                             initial_states=[tf.zeros([3, 8])])
    np.testing.assert_allclose(states[0].numpy()[2], short.numpy()[2, 0], atol=1e-6)  # one real step


@pytest.mark.parametrize("cell", sorted(LAYERS))
def test_decoder_step_matches_keras_cells_with_input_feeding(cell):
    keras.utils.set_random_seed(4)
    model = Seq2Seq(20, 30, embedding_dim=6, units=8, decoder_layers=2, cell=cell, dropout=0.0)
    model.build_weights()
    source = tf.constant([[5, 6, 7, 3], [8, 3, 0, 0]])
    memory, state = model.encode(source)
    state["feed"] = tf.random.normal([2, 8])
    token = tf.constant([4, 9])
    attentional, new_state, _ = model.decoder.step(token, state, memory)

    decoder = model.decoder
    x = tf.concat([decoder.embedding(token), state["feed"]], -1)
    expected_states = []
    for rnn, layer_state in zip(decoder.rnns, state["rnn"]):
        x, cell_state = rnn.cell(x, list(layer_state))
        expected_states.append(cell_state)
    context, _ = decoder.attention(x[:, None], memory["keys"], memory["values"], memory["mask"])
    expected = decoder.combine(tf.concat([x[:, None], context], -1))[:, 0]
    np.testing.assert_allclose(attentional.numpy(), expected.numpy(), atol=1e-5)
    for layer_state, expected_layer in zip(new_state["rnn"], expected_states, strict=True):
        for a, b in zip(layer_state, expected_layer, strict=True):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_teacher_forced_decoding_equals_its_steps():
    keras.utils.set_random_seed(5)
    model = Seq2Seq(20, 30, embedding_dim=6, units=8, dropout=0.0)
    model.build_weights()
    source = tf.constant([[5, 6, 7, 3], [8, 3, 0, 0]])
    target_in = tf.constant([[2, 4, 9, 11], [2, 12, 13, 0]])
    memory, state = model.encode(source)
    whole, _ = model.decoder(target_in, state, memory)
    for t in range(4):
        attentional, state, _ = model.decoder.step(target_in[:, t], state, memory)
        np.testing.assert_allclose(whole.numpy()[:, t], attentional.numpy(), atol=1e-5)


def test_unsupported_cells_are_refused():
    with pytest.raises(ValueError, match="reset_after"):
        recurrent.cell_kind(keras.layers.GRUCell(4, reset_after=False))
    with pytest.raises(ValueError, match="bias"):
        recurrent.cell_kind(keras.layers.LSTMCell(4, use_bias=False))


def test_the_keras_layers_used_on_a_gpu_compute_the_same(monkeypatch):
    keras.utils.set_random_seed(6)
    model = Seq2Seq(20, 30, embedding_dim=6, units=8, encoder_layers=2, decoder_layers=2, input_feeding=False,
                    dropout=0.0)
    model.build_weights()
    inputs = (tf.constant([[5, 6, 7, 3], [8, 3, 0, 0]]), tf.constant([[2, 4, 9, 11], [2, 12, 13, 0]]))
    looped = model(inputs).numpy()
    monkeypatch.setattr(recurrent, "fused_kernel_available", lambda: True)
    monkeypatch.setattr(recurrent, "run", lambda *args, **kwargs: pytest.fail("the time loop ran"))
    np.testing.assert_allclose(model(inputs).numpy(), looped, atol=1e-5)

