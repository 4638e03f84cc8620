"""Matrix products in bfloat16 on float32 weights, where the CPU computes bfloat16 natively.

``model.output_bfloat16`` (the output layer) and ``model.recurrent_bfloat16`` (the encoder's
and the decoder's products: input projections, recurrent steps, input feed, attention
projections, attentional layer) round a product's two operands to bfloat16 (oneDNN sums the
products in float32 and rounds the result to bfloat16) and go on in float32: weights, states,
gates, softmax and loss stay float32. The products' gradients are bfloat16 products too.
``auto`` chooses bfloat16 where the CPU has AVX512_BF16 or AMX-BF16 (oneDNN then runs bfloat16
kernels), float32 elsewhere, where bfloat16 would be emulated.

A weight read inside a time loop is cast once before the loop (``kernel``): a cast inside the
loop would convert the whole matrix at every step.
"""

import tensorflow as tf

BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bfloat16(cpuinfo="/proc/cpuinfo"):
    """Whether the CPU's flags (Linux's ``cpuinfo``) include AVX512_BF16 or AMX-BF16; False where
    the file cannot be read."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in BFLOAT16_FLAGS)


def resolve_bfloat16(setting):
    """A ``BOOL_OR_AUTO`` setting (True, False or "auto") -> whether to compute in bfloat16."""
    return cpu_has_bfloat16() if setting == "auto" else bool(setting)


def kernel(weight, bfloat16, dtype=tf.float32):
    """A weight as ``matmul`` takes it: float [k, n] -> bfloat16 if ``bfloat16``, else ``dtype``."""
    return tf.cast(weight, tf.bfloat16 if bfloat16 else dtype)


def matmul(x, weight, bfloat16=None, transpose_b=False):
    """``x`` [..., k] times ``weight`` [k, n] ([n, k] with ``transpose_b``) -> [..., n].

    ``bfloat16``: True rounds both operands to bfloat16 and returns the product in float32;
    False computes in x's dtype; None follows the weight's dtype (a ``kernel``): bfloat16 weights
    give a bfloat16 product returned in x's dtype. A rank-2 ``x`` is one ``tf.matmul``; more
    axes are flattened into its rows.
    """
    dtype = x.dtype
    if bfloat16 is None:
        bfloat16 = weight.dtype == tf.bfloat16
        result_dtype = dtype
    else:
        result_dtype = tf.float32 if bfloat16 else dtype
    weight = kernel(weight, bfloat16, dtype)
    x = tf.cast(x, weight.dtype)
    flat = x if x.shape.rank == 2 else tf.reshape(x, [-1, x.shape[-1]])
    y = tf.matmul(flat, weight, transpose_b=transpose_b)
    if x.shape.rank != 2:
        y = tf.reshape(y, tf.concat([tf.shape(x)[:-1], tf.shape(y)[-1:]], 0))
    return tf.cast(y, result_dtype)
