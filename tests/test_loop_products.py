"""Training's time loops make their products' weight gradients after the loop
(``seq2seq.loop_products``): the gradients equal the loops' own autodiff, and none of those
weights' gradients comes out of a time loop's backward pass."""

import numpy as np
import pytest
import tensorflow as tf

from seq2seq.config import ModelConfig
from seq2seq.model import Seq2Seq
from seq2seq.optimization import sequence_loss

FLOAT32 = {"output_bfloat16": False, "recurrent_bfloat16": False}
VARIANTS = {
    "gru, input feeding (the reference architecture)": {"dropout_placement": "attention_input"},
    "gru, layer normalization, dropout after the recurrent layers": {"layer_norm": True,
                                                                     "dropout_placement": "all_outputs"},
    "lstm, 2 layers each side": {"cell": "lstm", "encoder_layers": 2, "decoder_layers": 2},
    "rnn, no input feeding, 2 decoder layers": {"cell": "rnn", "input_feeding": False, "decoder_layers": 2},
}


def _model(**options):
    config = ModelConfig(embedding_dim=8, units=12, attention_units=10, dropout=0.0, **options)
    return Seq2Seq.from_config_section(config, 40, 40)


def _batch():
    source = tf.constant([[5, 9, 11, 3, 2], [7, 8, 2, 0, 0], [4, 2, 0, 0, 0]])
    target = tf.constant([[6, 12, 13, 2], [9, 2, 0, 0], [14, 15, 16, 2]])
    return source, target


def _gradients(model, training):
    """The token loss's gradients, with the training path (``training``; no dropout here, so the
    forward pass is the same) or the loops' own autodiff (not training)."""
    source, target = _batch()
    variables = model.trainable_variables

    @tf.function(autograph=False)
    def gradients():
        with tf.GradientTape() as tape:
            loss, _ = sequence_loss(model, source, target, training, 0.1)
        return tape.gradient(loss, variables)

    return [tf.convert_to_tensor(g).numpy() for g in gradients()]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_gradients_equal_the_loops_own(variant):
    model = _model(**VARIANTS[variant], **FLOAT32)
    expected, actual = _gradients(model, False), _gradients(model, True)
    for variable, e, a in zip(model.trainable_variables, expected, actual, strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-6 * np.abs(e).max(), err_msg=variable.path)


def test_bfloat16_gradients_within_rounding():
    """With bfloat16 products the steps' gradients are summed in float32 rather than rounded to
    bfloat16 step by step: equal to within bfloat16's precision (8 bits)."""
    model = _model(output_bfloat16=True, recurrent_bfloat16=True)
    expected, actual = _gradients(model, False), _gradients(model, True)
    for variable, e, a in zip(model.trainable_variables, expected, actual, strict=True):
        np.testing.assert_allclose(a, e, atol=2e-2 * np.abs(e).max(), err_msg=variable.path)


def _producer(tensor):
    """The op that makes ``tensor``, past identities and casts."""
    op = tensor.op
    while op.type in ("Identity", "Cast", "IdentityN"):
        op = op.inputs[0].op if op.type != "IdentityN" else op.inputs[list(op.outputs).index(tensor)].op
        tensor = op.outputs[0]
    return op


def _traced_gradients(model):
    """The training path's gradients of the token loss on ``_batch()``, traced (a concrete function)."""
    source, target = _batch()

    def gradients(source, target):
        with tf.GradientTape() as tape:
            loss, _ = sequence_loss(model, source, target, True, 0.1)
        return tape.gradient(loss, model.trainable_variables)

    return tf.function(gradients, autograph=False).get_concrete_function(source, target)


def test_no_loop_weight_gradient_comes_out_of_a_loop():
    model = _model(**VARIANTS["gru, input feeding (the reference architecture)"], **FLOAT32)
    variables = model.trainable_variables
    outputs = _traced_gradients(model).structured_outputs
    in_loops = ("recurrent_kernel", "query_projection/kernel", "combine/kernel")
    checked = 0
    for variable, gradient in zip(variables, outputs, strict=True):
        if variable.path.endswith(in_loops):
            checked += 1
            assert "While" not in _producer(gradient).type, variable.path
    assert checked == 5  # two encoder directions, the decoder's recurrent, query and combine kernels


def test_the_recorded_inputs_give_the_backward_loops_no_lists_of_zeros():
    """A float list that a time loop writes and no gradient reaches makes the loop's backward
    pass start from a zero-filled copy of it; the recorded inputs are written as integer bits,
    which no gradient is asked of."""
    model = Seq2Seq.from_config_section(ModelConfig(embedding_dim=8, units=12, attention_units=10, dropout=0.3,
                                                    dropout_placement="all_outputs", decoder_layers=2), 40, 40)
    graph = _traced_gradients(model).graph
    loops = [op for op in graph.get_operations() if op.type in ("While", "StatelessWhile")
             and not op.name.endswith("_grad")]
    zeroed = []
    for loop in loops:
        body = graph._get_function(loop.get_attr("body").name).graph
        for output in loop.outputs:
            zeros = [c for c in output.consumers() if c.type == "ZerosLike"]
            if not any(c.type in ("While", "StatelessWhile") for z in zeros for c in z.outputs[0].consumers()):
                continue  # no zero-filled gradient goes into a backward loop
            if _past_identities(body.outputs[output.value_index].op).type == "TensorListSetItem":
                zeroed.append(output.name)
    assert len(loops) == 2  # the encoder's and the decoder's
    assert zeroed == [], zeroed


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_backward_loops_build_no_list_a_step(variant):
    """The steps' inputs and the probes are popped from lists: a pop's gradient pushes, where a
    differentiable TensorArray read's gradient builds a whole list at every backward step (a
    ``TensorListReserve``) and adds it to a running one."""
    graph = _traced_gradients(_model(**VARIANTS[variant], **FLOAT32)).graph
    backward = [op for op in graph.get_operations() if op.type in ("While", "StatelessWhile")
                and op.name.endswith("_grad")]
    assert len(backward) >= 2  # at least the encoder's and the decoder's (one a layer without input feeding)
    for loop in backward:
        body = graph._get_function(loop.get_attr("body").name).graph
        assert [op.name for op in body.get_operations() if op.type == "TensorListReserve"] == [], loop.name


def _past_identities(op):
    while op.type == "Identity":
        op = op.inputs[0].op
    return op
