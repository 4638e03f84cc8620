import keras
import numpy as np
import pytest
import tensorflow as tf

from seq2seq.attention import batched_matmul
from seq2seq.layers import Dropout, WordDropout
from seq2seq.model import BahdanauAttention, Encoder, Seq2Seq
from seq2seq.optimization import sequence_loss

SOURCE = np.array([[5, 6, 7, 8, 3], [9, 10, 3, 0, 0]], np.int32)
TARGET_IN = np.array([[2, 11, 12, 13], [2, 14, 15, 0]], np.int32)


def _model(cell="gru", input_feeding=True, bidirectional=True, layers=2, seed=0, tie_embeddings=False,
           dropout=0.2, dropout_placement="attention_input", **kwargs):
    keras.utils.set_random_seed(seed)
    model = Seq2Seq(40, 50, embedding_dim=8, units=16, encoder_layers=layers, decoder_layers=layers, cell=cell,
                    bidirectional=bidirectional, attention_units=12, input_feeding=input_feeding, dropout=dropout,
                    tie_embeddings=tie_embeddings, dropout_placement=dropout_placement, **kwargs)
    model.build_weights()
    return model


def test_attention_weights_sum_to_one_and_are_zero_on_padding():
    attention = BahdanauAttention(6)
    values = tf.random.normal([2, 5, 4])
    mask = tf.constant([[True] * 5, [True, True, False, False, False]])
    query = tf.random.normal([2, 3, 7])
    context, weights = attention(query, attention.project_keys(values), values, mask)
    assert context.shape == (2, 3, 4) and weights.shape == (2, 3, 5)
    np.testing.assert_allclose(tf.reduce_sum(weights, -1).numpy(), 1.0, rtol=1e-6)
    assert np.all(weights.numpy()[1, :, 2:] == 0.0)
    assert np.all(weights.numpy()[1, :, :2] > 0.0)


def test_attention_is_additive_bahdanau_score():
    attention = BahdanauAttention(3)
    values, query = tf.random.normal([1, 4, 2]), tf.random.normal([1, 1, 5])
    _, weights = attention(query, attention.project_keys(values), values, tf.ones([1, 4], tf.bool))
    w1, w2, b2 = (attention.query_projection.kernel, attention.key_projection.kernel,
                  attention.key_projection.bias)
    v = attention.energy.kernel
    scores = tf.squeeze(tf.tanh(query[0] @ w1 + values[0] @ w2 + b2) @ v, -1)
    np.testing.assert_allclose(weights.numpy()[0, 0], tf.nn.softmax(scores).numpy(), rtol=1e-5)


def test_attention_of_one_step_equals_each_position_of_a_sequence():
    attention = BahdanauAttention(6)
    values = tf.random.normal([2, 5, 4])
    mask = tf.constant([[True] * 5, [True, True, True, False, False]])
    query = tf.random.normal([2, 3, 7])
    keys = attention.project_keys(values)
    context, weights = attention(query, keys, values, mask)
    for t in range(3):
        step_context, step_weights = attention(query[:, t], keys, values, mask)
        assert step_context.shape == (2, 4) and step_weights.shape == (2, 5)
        np.testing.assert_allclose(step_context, context[:, t], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(step_weights, weights[:, t], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shapes", [([4, 1, 6], [4, 6, 5]), ([3, 2, 7], [3, 7, 9])])
def test_the_attentions_batched_matmul_is_tf_matmul_through_eigens_kernel(shapes):
    x, y = (tf.random.stateless_normal(shape, [i, 1]) for i, shape in enumerate(shapes))
    upstream = tf.random.stateless_normal([shapes[0][0], shapes[0][1], shapes[1][2]], [9, 1])

    def gradients(product):
        with tf.GradientTape() as tape:
            tape.watch([x, y])
            z = product(x, y)
            loss = tf.reduce_sum(z * upstream)
        return [z, *tape.gradient(loss, [x, y])]

    for got, expected in zip(gradients(batched_matmul), gradients(tf.matmul), strict=True):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    graph = tf.function(lambda x, y: gradients(batched_matmul), autograph=False).get_concrete_function(x, y).graph
    kinds = [op.type for op in graph.get_operations() if "MatMul" in op.type]
    assert kinds == ["BatchMatMulV3"] * 3  # the product and both gradients: none that oneDNN rewrites


def test_encoder_output_is_zero_at_padding_and_ignores_padding_length():
    encoder = Encoder(40, 8, 16, 2, "lstm", True, 0.0)
    outputs, mask = encoder(tf.constant(SOURCE))
    assert outputs.shape == (2, 5, 32)
    assert np.all(outputs.numpy()[1, 3:] == 0.0) and np.all(outputs.numpy()[1, :3] != 0.0)
    longer, _ = encoder(tf.constant(np.pad(SOURCE, [[0, 0], [0, 4]])))
    np.testing.assert_allclose(longer.numpy()[:, :5], outputs.numpy(), atol=1e-6)
    assert mask.numpy().tolist() == (SOURCE != 0).tolist()


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("input_feeding", [True, False])
def test_padding_never_changes_outputs(cell, input_feeding):
    model = _model(cell, input_feeding)
    logits = model((SOURCE, TARGET_IN)).numpy()
    assert logits.shape == (2, 4, 50)
    # More source padding: same logits.
    padded = model((np.pad(SOURCE, [[0, 0], [0, 3]]), TARGET_IN)).numpy()
    np.testing.assert_allclose(padded, logits, atol=1e-5)
    # The short sentence alone (no padding at all) gives the same logits as inside the batch.
    alone = model((SOURCE[1:, :3], TARGET_IN[1:, :3])).numpy()
    np.testing.assert_allclose(alone[0], logits[1, :3], atol=1e-5)
    # Target padding does not change the outputs at real positions.
    extra = model((SOURCE, np.pad(TARGET_IN, [[0, 0], [0, 2]]))).numpy()
    np.testing.assert_allclose(extra[:, :4], logits, atol=1e-5)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("input_feeding", [True, False])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_step_by_step_decoding_equals_teacher_forcing(cell, input_feeding, layer_norm):
    model = _model(cell, input_feeding, layer_norm=layer_norm)
    full = model((SOURCE, TARGET_IN)).numpy()
    memory, state = model.encode(tf.constant(SOURCE))
    for t in range(TARGET_IN.shape[1]):
        logits, state, weights = model.decode_step(tf.constant(TARGET_IN[:, t]), state, memory)
        np.testing.assert_allclose(logits.numpy(), full[:, t], atol=1e-5)
        assert np.all(weights.numpy()[1, 3:] == 0.0)


def test_dropout_only_in_training():
    model = _model()
    a = model((SOURCE, TARGET_IN), training=False).numpy()
    b = model((SOURCE, TARGET_IN), training=False).numpy()
    c = model((SOURCE, TARGET_IN), training=True).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("shape", [(64, 50, 8), (3000, 8)])
def test_word_dropout_zeroes_whole_tokens_only_in_training(shape):
    layer = WordDropout(0.3, seed=5)
    x = tf.random.normal(shape) + 3.0  # no zeros of its own
    dropped = tf.function(lambda x: layer(x, training=True))(x).numpy()
    zero = np.all(dropped == 0, axis=-1)
    assert zero.mean() == pytest.approx(0.3, abs=0.03)
    assert not np.any((dropped == 0) & ~zero[..., None])  # a token is dropped whole or not at all
    np.testing.assert_allclose(dropped[~zero], x.numpy()[~zero] / 0.7, rtol=1e-6)
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())
    assert not np.array_equal(layer(x, training=True).numpy(), dropped)  # a new draw each call


@pytest.mark.parametrize("rate, shape", [(0.3, (40, 30, 256)), (0.5, (501, 7)), (0.999, (64, 1000))])
def test_dropout_mask_from_random_bytes(rate, shape):
    layer = Dropout(rate, seed=3)
    assert layer.drop_rate == min(round(rate * 256), 255) / 256
    x = tf.random.normal(shape) + 5.0  # no zeros of its own
    dropped = tf.function(lambda x: layer(x, training=True))(x).numpy()
    zero = dropped == 0
    assert zero.mean() == pytest.approx(layer.drop_rate, abs=0.01)
    np.testing.assert_allclose(dropped[~zero], x.numpy()[~zero] / (1 - layer.drop_rate), rtol=1e-6)
    assert abs(np.corrcoef(zero[:-1].ravel(), zero[1:].ravel())[0, 1]) < 0.02  # no pattern across rows
    for byte in range(4):  # each byte of a random word drops as often
        assert zero.ravel()[byte::4].mean() == pytest.approx(layer.drop_rate, abs=0.015)
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())
    assert not np.array_equal(layer(x, training=True).numpy(), dropped)  # a new draw each call
    again = Dropout(rate, seed=3)
    np.testing.assert_array_equal(tf.function(lambda x: again(x, training=True))(x).numpy(), dropped)  # seeded


def test_variational_dropout_shares_one_mask_over_a_sequences_time_steps():
    layer = Dropout(0.5, variational=True, seed=3)
    x = tf.random.normal([64, 30, 16]) + 5.0  # no zeros of its own
    dropped = tf.function(lambda x: layer(x, training=True))(x).numpy()
    zero = dropped == 0
    assert np.all(zero == zero[:, :1])  # one mask per sentence and feature, at every step
    assert zero[:, 0].mean() == pytest.approx(0.5, abs=0.06)
    assert not np.array_equal(zero[0, 0], zero[1, 0])  # sentences draw their own
    np.testing.assert_allclose(dropped[~zero], x.numpy()[~zero] * 2, rtol=1e-6)
    flat = layer(tf.random.normal([64, 16]) + 5.0, training=True).numpy() == 0  # not a sequence: per element
    assert not np.all(flat == flat[:1]) and flat.mean() == pytest.approx(0.5, abs=0.06)
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())
    assert Dropout.from_config(layer.get_config()).variational


def test_variational_dropout_in_the_model_keeps_a_units_drop_for_the_whole_sentence():
    source = np.random.default_rng(0).integers(4, 40, (16, 30)).astype(np.int32)
    for variational in (False, True):
        model = _model(dropout=0.5, dropout_placement="all_outputs", variational_dropout=variational)
        assert all(layer.variational == variational for layer in model._flatten_layers() if isinstance(layer, Dropout))
        zero = model.encoder(source, training=True)[0].numpy() == 0  # the top layer's dropped units
        assert zero.mean() == pytest.approx(0.5, abs=0.05)
        assert np.all(zero == zero[:, :1]) == variational
        embedded = model.decoder._embed(tf.constant(source), True).numpy() == 0
        assert np.all(embedded == embedded[:, :1]) == variational
        attentional = model.decoder.output_dropout(tf.ones([4, 6, 16]), training=True).numpy() == 0
        assert np.all(attentional == attentional[:, :1]) == variational
        rebuilt = Seq2Seq.from_config(model.get_config())
        assert rebuilt.encoder.variational_dropout == rebuilt.decoder.variational_dropout == variational
    inference = [_model(variational_dropout=v)((SOURCE, TARGET_IN), training=False).numpy() for v in (False, True)]
    np.testing.assert_array_equal(inference[0], inference[1])


def test_every_dropout_of_the_model_draws_random_bytes():
    model = _model()
    dropouts = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.Dropout)]
    assert len(dropouts) >= 4 and all(isinstance(layer, Dropout) for layer in dropouts)


def test_word_dropout_in_the_model_changes_training_not_inference():
    plain, dropping = _model(dropout=0.0), _model(dropout=0.0, word_dropout=0.5)
    dropping.set_weights(plain.get_weights())
    inference = [m((SOURCE, TARGET_IN), training=False).numpy() for m in (plain, dropping)]
    np.testing.assert_array_equal(inference[0], inference[1])
    np.testing.assert_array_equal(plain((SOURCE, TARGET_IN), training=True).numpy(), inference[0])
    assert not np.allclose(dropping((SOURCE, TARGET_IN), training=True).numpy(), inference[1])
    # Both sides: the source embeddings (the encoder) and the target inputs (the decoder) drop tokens.
    tokens = np.full((64, 20), 7, np.int32)
    for embedded in (dropping.encoder.word_dropout(dropping.encoder.embedding(tokens), training=True),
                     dropping.decoder._embed(tokens, training=True)):
        assert np.mean(np.all(embedded.numpy() == 0, axis=-1)) == pytest.approx(0.5, abs=0.05)
    assert dropping.encoder.word_dropout.rate == dropping.decoder.word_dropout.rate == 0.5
    assert Seq2Seq.from_config(dropping.get_config()).decoder.word_dropout.rate == 0.5


@pytest.mark.parametrize("layers", [1, 2])
def test_dropout_placement(layers):
    """all_outputs drops units of the top recurrent outputs (exact zeros in the encoder's memory) and
    of the attentional vector before the output layer; attention_input does neither and drops the
    attentional layer's input instead. Without training both are the same function of the weights."""
    source = np.random.default_rng(0).integers(4, 40, (16, 30)).astype(np.int32)
    zeros = {}
    for placement in ("all_outputs", "attention_input"):
        model = _model(layers=layers, dropout=0.5, dropout_placement=placement)
        values, _ = model.encoder(source, training=True)
        zeros[placement] = float(np.mean(values.numpy() == 0))
        attentional = tf.random.normal([4, 16])
        first, second = (model.decoder.logits(attentional, training=True).numpy() for _ in range(2))
        assert np.array_equal(first, second) == (placement == "attention_input")
        memory, _ = model.encode(source[:4])
        outputs = tf.random.normal([4, 3, 16])
        first, second = (model.decoder._attend(outputs, memory, training=True)[0].numpy() for _ in range(2))
        assert np.array_equal(first, second) == (placement == "all_outputs")
    assert zeros["all_outputs"] == pytest.approx(0.5, abs=0.05)
    assert zeros["attention_input"] == 0
    inference = [_model(dropout_placement=p)((SOURCE, TARGET_IN), training=False).numpy()
                 for p in ("all_outputs", "attention_input")]
    np.testing.assert_allclose(inference[0], inference[1], atol=1e-6)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_bridge_from_the_last_states(bidirectional):
    model = _model(bidirectional=bidirectional, bridge="last")
    memory, state = model.encode(tf.constant(SOURCE))
    values = memory["values"].numpy()
    for row, length in ((0, 5), (1, 3)):
        summary = (np.concatenate([values[row, length - 1, :16], values[row, 0, 16:]]) if bidirectional
                   else values[row, length - 1])
        expected = np.tanh(summary @ model.bridge.kernel.numpy() + model.bridge.bias.numpy())
        np.testing.assert_allclose(tf.concat([h[0] for h in state["rnn"]], -1)[row], expected, atol=1e-5)
    # Padding does not change it.
    _, alone = model.encode(tf.constant(SOURCE[1:, :3]))
    np.testing.assert_allclose(alone["rnn"][0][0][0], state["rnn"][0][0][1], atol=1e-5)


def test_embedding_initial_scale():
    model = Seq2Seq(400, 500, embedding_dim=64, units=16, embedding_stddev=0.1)
    model.build_weights()
    for embedding in (model.encoder.embedding, model.decoder.embedding):
        assert np.std(embedding.embeddings.numpy()) == pytest.approx(0.1, rel=0.05)


def test_layers_serialize_with_get_config():
    model = _model("lstm", input_feeding=False, bidirectional=False, layers=1)
    clone = Seq2Seq.from_config(model.get_config())
    assert clone.get_config() == {**model.get_config(), "name": clone.name}
    for layer in (model.encoder, model.decoder, model.decoder.attention):
        rebuilt = type(layer).from_config(layer.get_config())
        assert type(rebuilt) is type(layer) and rebuilt.get_config() == layer.get_config()


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_checkpoint_saves_and_restores_every_weight(cell, tmp_path):
    model = _model(cell, layers=2, seed=1)
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    saved = {name for name, _ in tf.train.list_variables(path)}
    assert sum("ATTRIBUTES/VARIABLE_VALUE" in name for name in saved) == len(model.weights) + 1  # + save_counter
    other = _model(cell, layers=2, seed=2)
    assert not np.allclose(other((SOURCE, TARGET_IN)), model((SOURCE, TARGET_IN)))
    tf.train.Checkpoint(model=other).restore(path).assert_consumed()
    np.testing.assert_allclose(other((SOURCE, TARGET_IN)), model((SOURCE, TARGET_IN)), atol=1e-6)


def test_layer_normalized_model_has_one_norm_per_cell_and_saves_it(tmp_path):
    model = _model(layers=2, layer_norm=True)
    plain = _model(layers=2)
    # Encoder: 2 layers x 2 directions, decoder: 2 layers; each 4 vectors of 3 gates x 16 units.
    assert model.count_params() - plain.count_params() == 6 * 4 * 3 * 16
    logits = model((SOURCE, TARGET_IN)).numpy()
    padded = model((np.pad(SOURCE, [[0, 0], [0, 3]]), TARGET_IN)).numpy()
    np.testing.assert_allclose(padded, logits, atol=1e-5)  # padding still changes nothing
    norm = model.decoder.norms[1]
    norm.recurrent_scale.assign(norm.recurrent_scale * 3.0)
    assert not np.allclose(model((SOURCE, TARGET_IN)), logits)
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    other = _model(layers=2, layer_norm=True, seed=5)
    tf.train.Checkpoint(model=other).restore(path).assert_consumed()
    np.testing.assert_allclose(other((SOURCE, TARGET_IN)), model((SOURCE, TARGET_IN)), atol=1e-6)
    assert Seq2Seq.from_config(model.get_config()).get_config()["layer_norm"] is True


def test_tied_output_layer_scores_against_the_target_embeddings(tmp_path):
    model = _model(tie_embeddings=True, layers=1)
    untied = _model(tie_embeddings=False, layers=1)
    # The output matrix is gone: 16 x 8 projection + 50 biases instead of 16 x 50 + 50.
    assert untied.count_params() - model.count_params() == 16 * 50 - 16 * 8
    decoder = model.decoder
    attentional = tf.random.normal([3, 16])
    embeddings = decoder.embedding.embeddings
    expected = decoder.output_projection.projection(attentional) @ tf.transpose(embeddings) / np.sqrt(8.0)
    np.testing.assert_allclose(decoder.logits(attentional), expected + decoder.output_projection.bias, atol=1e-5)
    # One matrix: changing the embedding changes the logits.
    before = model((SOURCE, TARGET_IN)).numpy()
    embeddings.assign(embeddings * 2.0)
    assert not np.allclose(model((SOURCE, TARGET_IN)), before)
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    other = _model(tie_embeddings=True, layers=1, seed=3)
    tf.train.Checkpoint(model=other).restore(path).assert_consumed()
    np.testing.assert_allclose(other((SOURCE, TARGET_IN)), model((SOURCE, TARGET_IN)), atol=1e-6)
    assert Seq2Seq.from_config(model.get_config()).get_config()["tie_embeddings"] is True


@pytest.mark.parametrize("tie_embeddings", [False, True])
def test_bfloat16_output_layer_keeps_float32_weights_and_logits(tie_embeddings):
    model = _model(tie_embeddings=tie_embeddings, layers=1, output_bfloat16=True)
    reference = _model(tie_embeddings=tie_embeddings, layers=1)
    reference.set_weights(model.get_weights())
    output = model.decoder.output_projection
    assert output.bfloat16 and all(w.dtype == "float32" for w in output.weights)
    assert model.decoder.combine.compute_dtype == "float32"  # only the output layer
    logits, expected = model((SOURCE, TARGET_IN)), reference((SOURCE, TARGET_IN))
    assert logits.dtype == tf.float32
    # bfloat16 keeps 8 bits of mantissa: logits within about 1% of the float32 model's, and rounded.
    np.testing.assert_allclose(logits, expected, atol=0.02 * float(np.abs(expected).max()))
    assert not np.allclose(logits, expected, rtol=0, atol=1e-5)
    memory, state = model.encode(tf.constant(SOURCE))
    assert model.decode_step(tf.constant(TARGET_IN[:, 0]), state, memory)[0].dtype == tf.float32
    assert Seq2Seq.from_config(model.get_config()).decoder.output_projection.bfloat16


def test_bfloat16_auto_follows_the_cpu_flags(tmp_path):
    from seq2seq.precision import cpu_has_bfloat16, resolve_bfloat16

    flags = "processor\t: 0\nflags\t\t: fpu sse avx512f {}\n"
    for extra, expected in (("", False), ("avx512_bf16", True), ("amx_bf16 amx_tile", True)):
        (tmp_path / "cpuinfo").write_text(flags.format(extra))
        assert cpu_has_bfloat16(str(tmp_path / "cpuinfo")) is expected
    assert cpu_has_bfloat16(str(tmp_path / "missing")) is False
    assert resolve_bfloat16(True) is True and resolve_bfloat16(False) is False
    assert resolve_bfloat16("auto") is cpu_has_bfloat16()
    model = _model(layers=1, output_bfloat16="auto", recurrent_bfloat16="auto")
    assert model.decoder.output_projection.bfloat16 is cpu_has_bfloat16()
    assert model.encoder.bfloat16 is model.decoder.bfloat16 is model.decoder.attention.bfloat16 is cpu_has_bfloat16()
    assert model.get_config()["recurrent_bfloat16"] == "auto"


def _loss_and_gradients(model):
    with tf.GradientTape() as tape:
        logits = model((SOURCE, TARGET_IN), training=False)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(TARGET_IN[:, 1:], logits[:, :-1]))
    gradients = tape.gradient(loss, model.trainable_weights)
    return logits, [tf.convert_to_tensor(g) for g in gradients]


@pytest.mark.parametrize("input_feeding", [True, False])
def test_bfloat16_recurrent_matmuls_keep_float32_weights_states_and_gradients(input_feeding):
    # Two layers each side: the bidirectional encoder, the decoder's second layer's input kernel.
    model = _model(input_feeding=input_feeding, recurrent_bfloat16=True)
    reference = _model(input_feeding=input_feeding)
    reference.set_weights(model.get_weights())
    assert model.encoder.bfloat16 and model.decoder.bfloat16 and model.decoder.attention.bfloat16
    assert not model.decoder.output_projection.bfloat16  # the output layer has its own key
    assert all(w.dtype == "float32" for w in model.weights)
    (logits, gradients), (expected, expected_gradients) = _loss_and_gradients(model), _loss_and_gradients(reference)
    assert logits.dtype == tf.float32
    # Operands and products rounded to bfloat16 (8 bits of mantissa) through two recurrent layers
    # a side: within a few percent of float32, and not equal to it.
    np.testing.assert_allclose(logits, expected, atol=0.03 * float(np.abs(expected).max()))
    assert not np.allclose(logits, expected, rtol=0, atol=1e-5)
    for weight, gradient, want in zip(model.trainable_weights, gradients, expected_gradients):
        assert gradient.dtype == tf.float32, weight.path
        cosine = tf.reduce_sum(gradient * want) / (tf.norm(gradient) * tf.norm(want) + 1e-30)
        assert float(cosine) > 0.99, weight.path
    memory, state = model.encode(tf.constant(SOURCE))
    prepared = model.step_weights()  # as search makes them, once before its time loop
    assert prepared["recurrent"][1].dtype == prepared["combine"].dtype == tf.bfloat16
    for t in range(TARGET_IN.shape[1]):
        token = tf.constant(TARGET_IN[:, t])
        step_logits, next_state, _ = model.decode_step(token, state, memory, prepared)
        np.testing.assert_array_equal(step_logits, model.decode_step(token, state, memory)[0])
        np.testing.assert_allclose(step_logits, logits[:, t], atol=0.02 * float(np.abs(logits).max()))
        state = next_state
    assert all(s.dtype == tf.float32 for s in tf.nest.flatten(state))
    assert Seq2Seq.from_config(model.get_config()).encoder.bfloat16


@pytest.mark.parametrize("tie_embeddings", [False, True])
def test_a_decoding_step_multiplies_by_the_bfloat16_kernels_made_before_the_loop(tie_embeddings):
    # The kernels that search makes once go straight into matmuls: none is cast back to float32
    # (Keras's __call__ casts floating arguments to the compute dtype) or sliced at every step.
    model = _model(recurrent_bfloat16=True, output_bfloat16=True, tie_embeddings=tie_embeddings)
    memory, state = model.encode(tf.constant(SOURCE))
    prepared = model.step_weights()
    kernels = [w for w in tf.nest.flatten(prepared) if w is not None and w.dtype == tf.bfloat16]
    assert len(kernels) == 8 and prepared["output"]["bias"].dtype == tf.float32
    token = tf.constant(TARGET_IN[:, 0])
    step = tf.function(lambda token, state, memory, weights: model.decode_step(token, state, memory, weights)[0])
    graph = step.get_concrete_function(token, state, memory, prepared).graph
    arguments = [t for t in graph.inputs if t.dtype == tf.bfloat16]
    assert len(arguments) == len(kernels)
    for argument in arguments:
        readers = {op.type for op in graph.get_operations() if argument.name in [t.name for t in op.inputs]}
        assert readers and readers <= {"MatMul", "BatchMatMulV2"}, readers
    np.testing.assert_array_equal(step(token, state, memory, prepared), model.decode_step(token, state, memory)[0])


@pytest.mark.parametrize("recurrent_bfloat16", [False, True])
def test_a_step_of_hypotheses_grouped_by_sentence_equals_a_step_over_tiled_memory(recurrent_bfloat16):
    # Search keeps one memory row per sentence and passes beam=k: each sentence's k hypotheses
    # attend over it together, as k rows over k copies of it would.
    model = _model(recurrent_bfloat16=recurrent_bfloat16)
    memory, state = model.encode(tf.constant(SOURCE))
    beam, sentences = 3, SOURCE.shape[0]
    tiled = tf.nest.map_structure(lambda x: tf.repeat(x, beam, axis=0), (memory, state))
    state = tf.nest.map_structure(lambda x: x + tf.random.normal(tf.shape(x), stddev=0.1), tiled[1])
    token = tf.constant(np.arange(sentences * beam) % 40 + 4, tf.int32)
    logits, new_state, attention = model.decode_step(token, state, memory, beam=beam)
    want_logits, want_state, want_attention = model.decode_step(token, state, tiled[0])
    assert logits.shape == (sentences * beam, 50) and attention.shape == (sentences * beam, SOURCE.shape[1])
    np.testing.assert_allclose(logits, want_logits, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(attention, want_attention, rtol=1e-6, atol=1e-7)
    for got, want in zip(tf.nest.flatten(new_state), tf.nest.flatten(want_state)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert not np.allclose(logits[0], logits[1])  # the rows of a group differ


@pytest.mark.parametrize("variational", [False, True])
@pytest.mark.parametrize("placement", ["attention_input", "all_outputs"])
def test_teacher_forcing_draws_every_steps_dropout_masks_before_its_loop(placement, variational):
    # Two layers: dropout between them, and after the top one or at the attentional layer's input.
    model = _model(dropout=0.5, dropout_placement=placement, variational_dropout=variational)
    decoder = model.decoder
    generators = [layer.seed_generator for layer in model._flatten_layers()
                  if isinstance(getattr(layer, "seed_generator", None), keras.random.SeedGenerator)]
    start = [g.state.numpy() for g in generators]
    memory, state = model.encode(tf.constant(SOURCE))
    embedded = decoder._embed(tf.constant(TARGET_IN), False)
    projected = decoder._project_embedded(embedded, decoder.step_weights()["embedded"])
    steps, batch, value_dim = TARGET_IN.shape[1], TARGET_IN.shape[0], memory["values"].shape[-1]
    masks = decoder._step_masks(steps, batch, value_dim, True)
    drawn = {"rnn": [None if m is None else m.stack().numpy() for m in masks["rnn"]],
             "attention": None if masks["attention"] is None else masks["attention"].stack().numpy()}
    present = [m for m in drawn["rnn"] + [drawn["attention"]] if m is not None]
    assert len(present) == 2
    for mask in present:
        assert set(np.unique(mask)) == {0.0, 2.0}  # dropped, or kept and scaled by 1 / (1 - 0.5)
        assert 0.3 < np.mean(mask == 0) < 0.7
        assert np.all(mask == mask[0]) == variational  # the sentence's one mask at every step, or a new one
    # The loop multiplies step t by mask t: the same as stepping by hand with those masks.
    for generator, value in zip(generators, start):
        generator.state.assign(value)
    weights, outputs = decoder.step_weights(), []
    attentional, _ = decoder._call_stepwise(projected, state, memory, True, weights)
    for t in range(steps):
        step_masks = {"rnn": [None if m is None else m[t] for m in drawn["rnn"]],
                      "attention": None if drawn["attention"] is None else drawn["attention"][t]}
        output, state, _ = decoder._step_projected(projected[:, t], state, memory, True, weights, masks=step_masks)
        outputs.append(output)
    np.testing.assert_allclose(attentional, tf.stack(outputs, 1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tie_embeddings", [False, True])
@pytest.mark.parametrize("output_bfloat16", [False, True])
def test_step_weights_pad_the_output_to_whole_blocks_whose_extra_logits_are_minus_infinity(tie_embeddings,
                                                                                           output_bfloat16):
    model = _model(tie_embeddings=tie_embeddings, output_bfloat16=output_bfloat16, output_pieces=list(range(45)))
    memory, state = model.encode(tf.constant(SOURCE))
    token = tf.constant(TARGET_IN[:, 1])
    exact, _, _ = model.decode_step(token, state, memory)
    padded, _, _ = model.decode_step(token, state, memory, model.step_weights(16))
    assert exact.shape == (2, 45) and padded.shape == (2, 48)
    np.testing.assert_array_equal(padded[:, :45], exact)
    assert np.all(np.isneginf(padded[:, 45:]))
    assert model.step_weights(15)["output"]["bias"].shape == (45,)  # already whole


@pytest.mark.parametrize("recurrent_bfloat16", [False, True])
def test_the_first_decoder_kernels_gradient_is_one_concatenation_not_two_scattered_slices(recurrent_bfloat16):
    # The embedded token's rows and the input feed's rows of the first layer's input kernel are
    # split once: no slice gradient (a kernel-sized tensor of zeros per slice) in the backward pass.
    model = _model(layers=1, dropout=0.0, recurrent_bfloat16=recurrent_bfloat16)
    kernel = model.decoder.rnns[0].cell.kernel

    @tf.function(autograph=False)
    def gradients(source, target):
        with tf.GradientTape() as tape:
            loss, tokens = sequence_loss(model, source, target, True, 0.1)
        return tape.gradient(loss, model.trainable_variables)

    graph = gradients.get_concrete_function(tf.constant(SOURCE), tf.constant(TARGET_IN)).graph
    slice_gradients = [op for op in graph.get_operations() if op.type == "StridedSliceGrad"
                       and op.outputs[0].shape == kernel.shape]
    assert not slice_gradients
    got = gradients(tf.constant(SOURCE), tf.constant(TARGET_IN))
    with tf.GradientTape() as tape:  # eagerly, the same function of the weights
        loss, _ = sequence_loss(model, tf.constant(SOURCE), tf.constant(TARGET_IN), True, 0.1)
    want = tape.gradient(loss, model.trainable_variables)
    index = [v.path for v in model.trainable_variables].index(kernel.path)
    assert float(tf.reduce_max(tf.abs(got[index]))) > 0
    np.testing.assert_allclose(got[index], want[index], rtol=1e-4, atol=1e-6)
