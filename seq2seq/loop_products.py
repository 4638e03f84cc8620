"""The weights' gradients of a differentiated time loop's products, made after the loop.

Differentiating ``y_t = x_t W`` inside a ``tf.while_loop`` makes, at every step of the backward
loop, the weight's gradient of that step (``x_tᵀ dy_t``, a small matmul) and adds it to a
running sum: a pass over the whole weight per step and product, memory-bound, and for a
bfloat16 kernel an element-wise bfloat16 add, which TensorFlow's CPU kernels run several times
slower than a float32 one. Summed over the steps it is ``Xᵀ dY`` for the stacked inputs and
output gradients, one large product.

``LoopProducts`` gets that product. Inside the loop each product multiplies by its kernel with
the gradient stopped and adds a zero "probe" popped from a list at the step (``Steps``); the
probe's gradient, which the backward loop pushes step by step, is the product's output gradient
``dy_t``. The loop records each product's input ``x_t``. A custom gradient on the probes' zeros
gets the stacked ``dY`` and makes each weight's gradient from it and the recorded ``X`` in one
product, for float32 weights in float32 (from bfloat16 operands where the loop multiplies in
bfloat16, as in the loop). The gradients equal the loop's own up to the order of the sums.

A loop takes each step's inputs the same way, popped from a list rather than read from a
TensorArray: the gradient of a ``TensorArray`` read in a loop adds two whole lists at every step
of the backward loop, starting from a zero-filled list the size of the inputs; a pop's gradient
is a push. A list pops its last element first, so it holds the steps last first; the recorded
inputs are kept in that order too, the order in which the probes' gradients arrive.

Three kinds of product (``Product.kind``):
  ``matrix``: x_t [batch, in] times a weight [in, out];
  ``stacked``: x_t [directions, batch, in] times a weight [directions, in, out] (the two
    directions of a bidirectional layer in one batched matmul, ``seq2seq.recurrent``);
  ``memory``: attention weights x_t [batch, src_len] times the memory [batch, src_len, dim]
    (the attention's context; the memory is a tensor, its gradient goes on to the encoder).
"""

import dataclasses

import tensorflow as tf

_BITS = {tf.float32: tf.int32, tf.bfloat16: tf.int16, tf.float16: tf.int16}  # a float type's integer of its width
EINSUM = {"matrix": "tbi,tbo->io", "stacked": "tdbi,tdbo->dio", "memory": "tbs,tbv->bsv"}


@dataclasses.dataclass
class Product:
    """One product of a loop: ``weight`` the float32 weight (or memory) the gradient goes to,
    ``kind`` as in the module docstring, ``output_shape`` the shape of one step's product
    (``[batch, out]``, ``[directions, batch, out]``), a list of ints or scalar tensors."""

    weight: tf.Tensor
    kind: str
    output_shape: list


def _weight_gradient(kind, inputs, upstream, bfloat16):
    """Σ over the steps (and rows) of each step's ``x_tᵀ dy_t``: inputs [time, ..., in], upstream
    [time, ..., out] -> the weight's gradient, float32."""
    if bfloat16:
        inputs, upstream = tf.cast(inputs, tf.bfloat16), tf.cast(upstream, tf.bfloat16)
    if kind == "matrix":  # one matmul over every step's rows
        gradient = tf.matmul(tf.reshape(inputs, [-1, inputs.shape[-1]]),
                             tf.reshape(upstream, [-1, upstream.shape[-1]]), transpose_a=True)
    elif kind == "stacked":  # [directions, time * batch, ...], one batched matmul
        def rows(x):
            return tf.reshape(tf.transpose(x, [1, 0, 2, 3]), [x.shape[1], -1, x.shape[-1]])
        gradient = tf.matmul(rows(inputs), rows(upstream), transpose_a=True)
    else:
        gradient = tf.einsum(EINSUM[kind], inputs, upstream)
    return tf.cast(gradient, tf.float32)


class LoopProducts:
    """The products of one differentiated time loop (see the module docstring).

    Before the loop: ``LoopProducts(products, steps, dtype, bfloat16)``. In the loop body, with
    ``arrays()`` among the loop variables: ``probes(arrays)`` (the step's zero probes, to add to
    each product's output) and ``record(arrays, t, inputs)`` (the step's products' inputs). After
    the loop: ``finish(arrays)``. Then differentiating through the loop gives each weight its
    gradient once.
    """

    def __init__(self, products, steps, dtype, bfloat16):
        self.products, self.steps, self.dtype, self.bfloat16 = dict(products), steps, dtype, bfloat16
        self.names = list(self.products)
        self._inputs = None  # the stacked inputs, set by ``finish``
        zeros = [tf.zeros(tf.stack([steps] + list(p.output_shape)), dtype) for p in self.products.values()]
        probes = self._hook(*zeros, *[p.weight for p in self.products.values()])
        self._probes = {name: Steps(z) for name, z in zip(self.names, probes)}  # zeros: in any order

    def _hook(self, *tensors):
        """The probes' zeros unchanged; their gradient (the stacked ``dY``) makes the weights'."""
        count = len(self.names)

        @tf.custom_gradient
        def hook(*tensors):
            def gradient(*upstream):
                if self._inputs is None:
                    raise RuntimeError("LoopProducts.finish was not called after the loop")
                weights = [_weight_gradient(product.kind, self._inputs[name], dy, self.bfloat16)
                           for (name, product), dy in zip(self.products.items(), upstream)]
                return [None] * count + [tf.cast(g, w.dtype) for g, w in zip(weights, tensors[count:])]

            return [tf.identity(z) for z in tensors[:count]], gradient

        return hook(*tensors)

    def arrays(self):
        """A loop variable: ``probes``, each product's list of probes to pop (``Steps``), and
        ``recorded``, the TensorArrays that record the products' inputs, last step first, as
        bits (``_bits``)."""
        return {"probes": {name: steps.initial for name, steps in self._probes.items()},
                "recorded": {name: tf.TensorArray(_BITS[self.dtype], size=self.steps) for name in self.names}}

    def probes(self, arrays):
        """(the step's zero probes {name: float [output_shape]}, ``arrays`` with them popped)."""
        popped = {name: self._probes[name].pop(probes) for name, probes in arrays["probes"].items()}
        return ({name: probe for name, (_, probe) in popped.items()},
                {**arrays, "probes": {name: rest for name, (rest, _) in popped.items()}})

    def record(self, arrays, t, inputs):
        """``arrays`` with step ``t``'s inputs recorded: ``inputs`` {name: x_t} for every product."""
        at = self.steps - 1 - t  # last step first, as the probes' gradients come
        return {**arrays, "recorded": {name: arrays["recorded"][name].write(at, _bits(tf.cast(inputs[name], self.dtype)))
                                       for name in self.names}}

    def finish(self, arrays):
        """Takes the recorded inputs (the loop's ``arrays`` after it), stacked [time, ...] last step first."""
        self._inputs = {name: tf.bitcast(array.stack(), self.dtype) for name, array in arrays["recorded"].items()}

    def inputs(self, name):
        """A product's recorded inputs, stacked [time, ...] in time order (after ``finish``)."""
        return tf.reverse(self._inputs[name], [0])


def _bits(x):
    """A float tensor's bits as integers of its width, for a TensorArray that a time loop writes
    and no gradient reaches: a list of floats would make the loop's backward pass start from a
    zero-filled copy of it. ``tf.bitcast(_bits(x), x.dtype)`` is ``x``."""
    return tf.bitcast(x, _BITS[x.dtype])


class Steps:
    """A time loop's inputs, one popped at each step (see the module docstring): before the loop
    ``Steps(last_first)``, float [time, ...], the steps' inputs stacked last step first, and
    ``initial`` among the loop variables; in the body ``pop(steps)`` -> (the rest, the step's input)."""

    def __init__(self, last_first):
        self.shape, self.dtype = last_first.shape[1:], last_first.dtype
        self._element_shape = tf.shape(last_first)[1:]
        self.initial = tf.raw_ops.TensorListFromTensor(tensor=last_first, element_shape=self._element_shape)

    def pop(self, steps):
        rest, step = tf.raw_ops.TensorListPopBack(input_handle=steps, element_shape=self._element_shape,
                                                  element_dtype=self.dtype)
        step.set_shape(self.shape)
        return rest, step


def stopped(weight, bfloat16, dtype):
    """A weight as a probed loop multiplies by it: in bfloat16 or ``dtype``, its gradient stopped."""
    return tf.stop_gradient(tf.cast(weight, tf.bfloat16 if bfloat16 else dtype))
