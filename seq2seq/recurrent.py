"""Recurrent layers with the input projection out of the time loop.

Keras's GRU, LSTM and SimpleRNN cells multiply each step's input by their input kernel inside
the time loop (on a CPU, where no cuDNN kernel runs the whole sequence). In a ``tf.while_loop``
that is one small matmul a step forward and two backward, plus a full-size gradient of the
kernel summed over the steps. Here the input projection of every time step is one matmul
before the loop, and the loop computes only what depends on the previous state: the
recurrent matmul and the gates.

Keras's layers and cells still own the weights (so checkpoints and ``get_config`` are
Keras's); these functions compute with them, with the same formulas as Keras's cells
(``implementation=2``, GRU with ``reset_after=True``), which a test checks.

Both directions of a bidirectional layer run in the same loop: their states are stacked on a
leading axis of size 2 and multiplied by their stacked recurrent kernels in one batched matmul,
the backward direction reading the time steps in reverse. In training the recurrent kernels'
gradients are made after the loop, in one product (``seq2seq.loop_products``).

With layer normalization (Ba et al. 2016, §3.1; ``model.layer_norm``), a cell's input projection
``W x + b`` and its recurrent projection ``U h`` are each normalized gate by gate (each gate's
block of ``units`` to mean 0 and variance 1) and then scaled and shifted per unit, with the
weights of a ``seq2seq.layers.GateNorm``; the input's normalization, like its projection, runs
before the time loop where the whole input is known.
"""

import tensorflow as tf

from seq2seq import precision
from seq2seq.loop_products import LoopProducts, Product, Steps, stopped

_KINDS = {"GRUCell": "gru", "LSTMCell": "lstm", "SimpleRNNCell": "rnn"}
GATES = {"gru": 3, "lstm": 4, "rnn": 1}  # blocks of ``units`` in a projection
EPSILON = 1e-5


def fused_kernel_available():
    """Whether a GPU is visible, where Keras's GRU and LSTM layers run a whole sequence in
    cuDNN's fused kernel: then callers run the Keras layers instead of ``run``."""
    return bool(tf.config.list_logical_devices("GPU"))


def cell_kind(cell):
    """'gru', 'lstm' or 'rnn' for a Keras cell with the defaults this package builds it with."""
    kind = _KINDS[type(cell).__name__]
    if kind == "gru" and not cell.reset_after:
        raise ValueError("GRU cells with reset_after=False are not supported")
    if not cell.use_bias:
        raise ValueError("recurrent cells without bias are not supported")
    return kind


def input_bias(cell):
    """The bias added to the input projection: float [gates * units]."""
    return cell.bias[0] if cell_kind(cell) == "gru" else cell.bias


def recurrent_bias(cell):
    """The bias added to the recurrent projection (GRU only, else None): float [3 * units]."""
    return cell.bias[1] if cell_kind(cell) == "gru" else None


def project_inputs(cell, inputs, kernel=None, bfloat16=False):
    """The input projection of any number of steps at once.

    Args:
      cell: a Keras GRU, LSTM or SimpleRNN cell.
      inputs: float [..., input_dim].
      kernel: the rows of ``cell.kernel`` that ``inputs`` meets (default all): float
        [input_dim, gates * units]; a bfloat16 kernel (``precision.kernel``) is a bfloat16 matmul.
      bfloat16: the matmul in bfloat16 (seq2seq/precision.py).
    Returns:
      float [..., gates * units]: ``inputs @ kernel + bias`` (the input bias), in inputs' dtype.
    """
    kernel = cell.kernel if kernel is None else kernel
    bias = tf.cast(input_bias(cell), inputs.dtype)
    if bfloat16 or kernel.dtype == tf.bfloat16:
        return precision.matmul(inputs, precision.kernel(kernel, True)) + bias
    kernel = tf.cast(kernel, inputs.dtype)
    return tf.tensordot(inputs, kernel, 1) + bias


def _sum_to(t, like):
    """``t`` summed over the axes that ``like`` broadcasts along (its missing leading axes and its
    axes of size 1): a broadcast operand's gradient, with the axes read from static shapes."""
    leading = t.shape.rank - like.shape.rank
    t = tf.reduce_sum(t, list(range(leading))) if leading else t
    ones = [i for i, d in enumerate(like.shape) if d == 1 and t.shape[i] != 1]
    return tf.reduce_sum(t, ones, keepdims=True) if ones else t


def layer_norm(x, scale, shift, gates):
    """Each gate's block of a projection normalized to mean 0 and variance 1, then ``* scale + shift``.

    The gradient is written out (``tf.custom_gradient``): with n the normalized blocks, g the
    incoming gradient times ``scale`` and sigma each block's standard deviation, the input's is
    ``(g - mean(g) - n * mean(g * n)) / sigma`` block by block, a few element-wise ops instead of
    the derivative of the mean and variance traced op by op, at every step of a time loop.

    Args:
      x: float [..., gates * units].
      scale, shift: float, broadcastable to x ([gates * units], or with leading axes).
      gates: python int.
    Returns:
      float of x's shape and dtype (the statistics in float32).
    """
    units = x.shape[-1] // gates

    @tf.custom_gradient
    def normalize(x, scale, shift):
        shape = tf.shape(x)
        blocks = tf.reshape(tf.cast(x, tf.float32), tf.concat([shape[:-1], [gates, units]], 0))
        centered = blocks - tf.reduce_mean(blocks, -1, keepdims=True)
        inverse = tf.math.rsqrt(tf.reduce_mean(tf.square(centered), -1, keepdims=True) + EPSILON)
        normalized = centered * inverse
        flat = tf.cast(tf.reshape(normalized, shape), x.dtype)
        flat.set_shape(x.shape)

        def gradient(upstream):
            scaled = tf.reshape(tf.cast(upstream * scale, tf.float32), tf.shape(blocks))
            d_blocks = inverse * (scaled - tf.reduce_mean(scaled, -1, keepdims=True)
                                  - normalized * tf.reduce_mean(scaled * normalized, -1, keepdims=True))
            return (tf.cast(tf.reshape(d_blocks, shape), x.dtype), _sum_to(upstream * flat, scale),
                    _sum_to(upstream, shift))

        return flat * scale + shift, gradient

    with tf.name_scope("layer_norm"):
        return normalize(x, tf.cast(scale, x.dtype), tf.cast(shift, x.dtype))


def normalize_inputs(norm, projected):
    """``projected`` [..., gates * units] normalized with a ``GateNorm``'s input weights (None: as it is)."""
    if norm is None:
        return projected
    return layer_norm(projected, norm.input_scale, norm.input_shift, norm.gates)


def step(kind, projected, states, kernel, bias=None, norm=None, probe=None):
    """One step of the recurrence from the step's projected input.

    Args:
      kind: 'gru', 'lstm' or 'rnn'.
      projected: float [..., batch, gates * units], from ``project_inputs``.
      states: list of float [..., batch, units]: [h], or [h, c] for LSTM.
      kernel: the recurrent kernel, float [..., units, gates * units] (leading axes as the states');
        in bfloat16 (``precision.kernel``) for a bfloat16 matmul with a result in the states' dtype.
      bias: the GRU's recurrent bias, float [..., 1, 3 * units] or [3 * units]; else None.
      norm: None, or the recurrent projection's layer normalization ``(scale, shift)``, each float
        [..., 1, gates * units] or [gates * units].
      probe: a ``LoopProducts`` probe added to the recurrent product, or None.
    Returns:
      output: float [..., batch, units], the new h.
      states: the new states.
    """
    with tf.name_scope("recurrent_step"):  # the name profiles group by (seq2seq/profiling.py)
        h = states[0]
        inner = tf.cast(tf.matmul(tf.cast(h, kernel.dtype), kernel), h.dtype)
        if probe is not None:
            inner += probe
        if norm is not None:
            inner = layer_norm(inner, *norm, GATES[kind])
        if kind == "gru":
            inner += bias
            x_z, x_r, x_h = tf.split(projected, 3, axis=-1)
            r_z, r_r, r_h = tf.split(inner, 3, axis=-1)
            z = tf.sigmoid(x_z + r_z)
            candidate = tf.tanh(x_h + tf.sigmoid(x_r + r_r) * r_h)
            h = z * h + (1 - z) * candidate
            return h, [h]
        if kind == "lstm":
            i, f, c, o = tf.split(projected + inner, 4, axis=-1)
            c = tf.sigmoid(f) * states[1] + tf.sigmoid(i) * tf.tanh(c)
            h = tf.sigmoid(o) * tf.tanh(c)
            return h, [h, c]
        h = tf.tanh(projected + inner)
        return h, [h]


def cell_step(cell, projected, states, norm=None, kernel=None, probe=None):
    """``step`` with one cell's own recurrent weights: projected [batch, gates * units], the
    input projection (``project_inputs``); ``norm``: the cell's ``GateNorm``, or None;
    ``kernel``: the cell's recurrent kernel as ``precision.kernel`` made it before a time loop
    (default: the kernel in projected's dtype); ``probe``: as in ``step``."""
    kind = cell_kind(cell)
    dtype = projected.dtype
    bias = recurrent_bias(cell)
    kernel = tf.cast(cell.recurrent_kernel, dtype) if kernel is None else kernel
    return step(kind, normalize_inputs(norm, projected), states, kernel,
                None if bias is None else tf.cast(bias, dtype),
                None if norm is None else (norm.recurrent_scale, norm.recurrent_shift), probe)


def _time_major(x):
    return tf.transpose(x, [1, 0] + list(range(2, x.shape.rank)))


def run(cells, projected, mask=None, initial_states=None, norms=None, bfloat16=False, training=False):
    """Runs one or two directions of a recurrent layer over a whole sequence.

    Args:
      cells: one cell, or two (forward, backward) of the same kind and size.
      projected: float [batch, time, gates * units], the input projection of each cell
        (a list of two for two cells).
      mask: bool [batch, time], False at padding, where a state does not change; None: no padding.
      initial_states: one cell's initial states, a list of float [batch, units] ([h], or [h, c]
        for LSTM); default zeros (always zeros for two cells).
      norms: None, or each cell's ``GateNorm`` (as ``cells``: one, or two).
      bfloat16: the recurrent matmuls in bfloat16 (seq2seq/precision.py).
      training: the loop is differentiated: the recurrent kernels' gradients are made after it
        (``seq2seq.loop_products``).
    Returns:
      outputs: float [batch, time, units], or [batch, time, 2 * units] for two cells (forward,
        then backward outputs, each at its own time step); undefined at padding.
      states: one cell's last states (as ``initial_states``); None for two cells.
    """
    two = isinstance(cells, (list, tuple))
    cells = list(cells) if two else [cells]
    projected = list(projected) if two else [projected]
    norms = None if norms is None else (list(norms) if two else [norms])
    if norms is not None:
        projected = [normalize_inputs(norm, p) for norm, p in zip(norms, projected)]
    kind, dtype, units = cell_kind(cells[0]), projected[0].dtype, cells[0].units
    # [time, directions, batch, ...], last step first (``loop_products.Steps``); the backward
    # direction reads the steps in reverse.
    inputs = [tf.reverse(_time_major(projected[0]), [0])] + ([_time_major(projected[1])] if two else [])
    inputs = tf.stack(inputs, 1)
    if mask is None:
        mask = tf.ones(tf.shape(projected[0])[:2], tf.bool)
    masks = [_time_major(mask)] + ([tf.reverse(_time_major(mask), [0])] if two else [])
    masks = tf.stack(masks, 1)[..., None]
    # [directions, units, gates * units]
    weight = tf.stack([tf.convert_to_tensor(c.recurrent_kernel) for c in cells])
    kernel = stopped(weight, bfloat16, dtype) if training else precision.kernel(weight, bfloat16, dtype)
    bias = None
    if kind == "gru":
        bias = tf.stack([tf.cast(recurrent_bias(c), dtype) for c in cells])[:, None, :]
    norm = None
    if norms is not None:  # [directions, 1, gates * units]
        norm = (tf.stack([tf.cast(n.recurrent_scale, dtype) for n in norms])[:, None, :],
                tf.stack([tf.cast(n.recurrent_shift, dtype) for n in norms])[:, None, :])
    steps = tf.shape(inputs)[0]
    if initial_states is None:
        zeros = tf.zeros(tf.concat([tf.shape(inputs)[1:3], [units]], 0), dtype)
        states = [zeros, zeros] if kind == "lstm" else [zeros]
    else:
        states = [tf.expand_dims(tf.cast(s, dtype), 0) for s in initial_states]
    products = None
    if training:
        shape = [len(cells), tf.shape(inputs)[2], inputs.shape[-1]]
        products = LoopProducts({"recurrent": Product(weight, "stacked", shape)}, steps, dtype, bfloat16)
    step_inputs = Steps(inputs)
    mask_array = tf.TensorArray(tf.bool, size=steps).unstack(masks)
    outputs = tf.TensorArray(dtype, size=steps)
    recorded = products.arrays() if products else {}

    def body(t, states, outputs, recorded, pending):
        keep = mask_array.read(t)
        probe = None
        if products:
            probes, recorded = products.probes(recorded)
            probe = probes["recurrent"]
        pending, x = step_inputs.pop(pending)
        output, new_states = step(kind, x, states, kernel, bias, norm, probe)
        if products:
            recorded = products.record(recorded, t, {"recurrent": states[0]})
        states = [tf.where(keep, new, old) for new, old in zip(new_states, states)]
        return t + 1, states, outputs.write(t, output), recorded, pending

    _, states, outputs, recorded, _ = tf.while_loop(lambda t, *_: t < steps, body,
                                                    (tf.constant(0), states, outputs, recorded, step_inputs.initial))
    if products:
        products.finish(recorded)
    # Unstacked, not indexed: a strided slice's gradient is a scatter into zeros of the whole shape.
    outputs = tf.unstack(outputs.stack(), num=len(cells), axis=1)  # directions × [time, batch, units]
    forward = _time_major(outputs[0])
    if not two:
        return forward, [tf.squeeze(s, 0) for s in states]
    return tf.concat([forward, _time_major(tf.reverse(outputs[1], [0]))], axis=-1), None
