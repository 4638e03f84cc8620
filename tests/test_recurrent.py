"""The recurrent layers run with their input projection out of the time loop compute what
Keras's own layers and cells compute."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from seq2seq import recurrent
from seq2seq.layers import GateNorm
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



def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _numpy_layer_norm(x, scale, shift, gates):
    blocks = x.reshape(x.shape[:-1] + (gates, -1))
    normalized = (blocks - blocks.mean(-1, keepdims=True)) / np.sqrt(blocks.var(-1, keepdims=True) + 1e-5)
    return normalized.reshape(x.shape) * scale + shift


def _random_norm(cell, seed):
    norm = GateNorm(recurrent.GATES[recurrent.cell_kind(cell)], cell.units)
    norm.build()
    rng = np.random.default_rng(seed)
    for weight in norm.weights:  # not the initial ones and zeros, so that each weight shows
        weight.assign(rng.normal(1.0 if "scale" in weight.name else 0.0, 0.5, weight.shape))
    return norm


def _numpy_ln_steps(kind, cell, norm, x, h, c=None, reverse=False, lengths=None):
    """A reference layer-normalized recurrence in numpy: x [batch, time, features] -> outputs."""
    kernel, recurrent_kernel = cell.kernel.numpy(), cell.recurrent_kernel.numpy()
    bias = cell.bias.numpy()
    w = {v.name: v.numpy() for v in norm.weights}
    gates = recurrent.GATES[kind]
    projected = x @ kernel + (bias[0] if kind == "gru" else bias)
    projected = _numpy_layer_norm(projected, w["input_scale"], w["input_shift"], gates)
    steps = range(x.shape[1])[::-1] if reverse else range(x.shape[1])
    outputs = np.zeros(x.shape[:2] + (cell.units,))
    for t in steps:
        inner = _numpy_layer_norm(h @ recurrent_kernel, w["recurrent_scale"], w["recurrent_shift"], gates)
        if kind == "gru":
            inner = inner + bias[1]
            (xz, xr, xh), (rz, rr, rh) = np.split(projected[:, t], 3, -1), np.split(inner, 3, -1)
            z = _sigmoid(xz + rz)
            new_h, new_c = z * h + (1 - z) * np.tanh(xh + _sigmoid(xr + rr) * rh), None
        elif kind == "lstm":
            i, f, g, o = np.split(projected[:, t] + inner, 4, -1)
            new_c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
            new_h = _sigmoid(o) * np.tanh(new_c)
        else:
            new_h, new_c = np.tanh(projected[:, t] + inner), None
        real = np.ones([x.shape[0], 1], bool) if lengths is None else (t < lengths)[:, None]
        h = np.where(real, new_h, h)
        c = None if new_c is None else np.where(real, new_c, c)
        outputs[:, t] = h
    return outputs, h


def test_layer_norm_normalizes_each_gate_block_then_scales_and_shifts():
    x = tf.random.normal([4, 3, 2 * 5], mean=3.0, stddev=2.0)
    plain = recurrent.layer_norm(x, tf.ones([10]), tf.zeros([10]), gates=2).numpy().reshape(4, 3, 2, 5)
    np.testing.assert_allclose(plain.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(plain.var(-1), 1.0, atol=1e-3)
    scale, shift = tf.random.normal([10]), tf.random.normal([10])
    np.testing.assert_allclose(recurrent.layer_norm(x, scale, shift, gates=2).numpy(),
                               _numpy_layer_norm(x.numpy(), scale.numpy(), shift.numpy(), 2), atol=1e-5)


def _traced_layer_norm(x, scale, shift, gates):
    """The normalization as TensorFlow's own ops, for autodiff to differentiate."""
    blocks = tf.reshape(x, tf.concat([tf.shape(x)[:-1], [gates, x.shape[-1] // gates]], 0))
    mean, variance = tf.nn.moments(blocks, axes=[-1], keepdims=True)
    return tf.reshape((blocks - mean) * tf.math.rsqrt(variance + recurrent.EPSILON), tf.shape(x)) * scale + shift


@pytest.mark.parametrize("x_shape, weight_shape", [((4, 3, 12), (12,)), ((2, 5, 12), (2, 1, 12)), ((6, 12), (12,))])
def test_layer_norm_gradient_equals_autodiff_of_the_traced_ops(x_shape, weight_shape):
    x = tf.random.normal(x_shape, mean=2.0, stddev=3.0, seed=1)
    scale, shift = tf.random.normal(weight_shape, seed=2), tf.random.normal(weight_shape, seed=3)
    upstream = tf.random.normal(x_shape, seed=4)
    gradients = []
    for layer_norm in (recurrent.layer_norm, _traced_layer_norm):
        with tf.GradientTape() as tape:
            tape.watch([x, scale, shift])
            loss = tf.reduce_sum(layer_norm(x, scale, shift, 3) * upstream)
        gradients.append(tape.gradient(loss, [x, scale, shift]))
    for written, traced in zip(*gradients):
        assert written.shape == traced.shape
        np.testing.assert_allclose(written.numpy(), traced.numpy(), atol=2e-5)


@pytest.mark.parametrize("cell", sorted(LAYERS))
def test_layer_normalized_layer_matches_a_numpy_reference(cell, inputs):
    x, mask = inputs
    layer = keras.layers.Bidirectional(LAYERS[cell](8, return_sequences=True))
    layer.build(x.shape)
    cells = [layer.forward_layer.cell, layer.backward_layer.cell]
    norms = [_random_norm(c, seed) for seed, c in enumerate(cells)]
    outputs, _ = recurrent.run(cells, [recurrent.project_inputs(c, x) for c in cells], mask, norms=norms)
    lengths = mask.numpy().sum(1)
    zeros = np.zeros([3, 8])
    forward, _ = _numpy_ln_steps(cell, cells[0], norms[0], x.numpy(), zeros, zeros, lengths=lengths)
    # The backward direction reads each sentence from its last real step (padding leaves zeros).
    backward = np.zeros_like(forward)
    for b, n in enumerate(lengths):
        backward[b, :n] = _numpy_ln_steps(cell, cells[1], norms[1], x.numpy()[b:b + 1, :n], zeros[:1], zeros[:1],
                                          reverse=True)[0][0]
    real = mask.numpy()
    np.testing.assert_allclose(outputs.numpy()[..., :8][real], forward[real], atol=1e-5)
    np.testing.assert_allclose(outputs.numpy()[..., 8:][real], backward[real], atol=1e-5)
    # One cell from an initial state, and its steps one at a time (what decoding runs), agree too.
    initial = [tf.random.normal([3, 8]) for _ in range(2 if cell == "lstm" else 1)]
    whole, states = recurrent.run(cells[0], recurrent.project_inputs(cells[0], x), initial_states=initial,
                                  norms=norms[0])
    expected, last = _numpy_ln_steps(cell, cells[0], norms[0], x.numpy(), initial[0].numpy(),
                                     initial[-1].numpy())
    np.testing.assert_allclose(whole.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(states[0].numpy(), last, atol=1e-5)
    stepped = initial
    for t in range(x.shape[1]):
        h, stepped = recurrent.cell_step(cells[0], recurrent.project_inputs(cells[0], x[:, t]), stepped, norms[0])
        np.testing.assert_allclose(h.numpy(), expected[:, t], atol=1e-5)


def test_layer_normalized_model_runs_its_own_loop_on_a_gpu_too(monkeypatch):
    keras.utils.set_random_seed(7)
    model = Seq2Seq(20, 30, embedding_dim=6, units=8, encoder_layers=2, decoder_layers=2, input_feeding=False,
                    dropout=0.0, layer_norm=True)
    model.build_weights()
    inputs = (tf.constant([[5, 6, 7, 3], [8, 3, 0, 0]]), tf.constant([[2, 4, 9, 11], [2, 12, 13, 0]]))
    looped = model(inputs).numpy()
    monkeypatch.setattr(recurrent, "fused_kernel_available", lambda: True)  # cuDNN has no layer normalization
    np.testing.assert_allclose(model(inputs).numpy(), looped, atol=1e-6)
