"""Arithmetic of a training step and the share of the machine's float32 peak that training uses.

``training_flops_per_token`` counts the floating-point operations of the model's matrix products
(2·m·n·k each; the element-wise work, embedding lookups and per-sentence terms such as the
bridge are left out, as model-FLOP utilization figures usually do) for one real target token of
a training step: the forward pass, and twice that for the backward pass (each product's
gradient with respect to its input and to its weights). The encoder's share is counted per
source token and weighed by the corpus's source tokens per target token; the attention's
scores and context by the mean source length that a target token attends over.

``matmul_peak`` measures what the machine reaches on one large float32 matrix product with
TensorFlow's default threads: the reference for "share of peak".
"""

import time

GATES = {"gru": 3, "lstm": 4, "rnn": 1}


def recurrent_flops(cell, input_dim, units):
    """Forward FLOPs of one recurrent step: the input and recurrent projections of every gate."""
    return 2 * (input_dim + units) * GATES[cell] * units


def forward_flops_per_token(model_config, target_vocab_size, source_per_target, attended_source_length):
    """Forward FLOPs of the matrix products for one target token.

    Args:
      model_config: a ``ModelConfig``.
      target_vocab_size: the output layer's size.
      source_per_target: source tokens per target token in the corpus (EOS included on both sides).
      attended_source_length: the mean number of source tokens a target token attends over
        (source lengths weighed by their target lengths).
    Returns:
      dict of ``encoder``, ``decoder`` (recurrence, attention, combination), ``output`` and
      ``total`` forward FLOPs.
    """
    m = model_config
    units, cell = m.units, m.cell
    directions = 2 if m.bidirectional else 1
    value_dim = units * directions
    attention_units = m.attention_units or units
    encoder, features = 0, m.embedding_dim
    for _ in range(m.encoder_layers):
        encoder += directions * recurrent_flops(cell, features, units)
        features = value_dim
    encoder += 2 * value_dim * attention_units  # the attention's key projection, once per source token
    decoder, features = 0, m.embedding_dim + (units if m.input_feeding else 0)
    for _ in range(m.decoder_layers):
        decoder += recurrent_flops(cell, features, units)
        features = units
    decoder += 2 * units * attention_units  # query projection
    decoder += 2 * attended_source_length * (attention_units + value_dim)  # scores (vᵀ tanh) and context
    decoder += 2 * (units + value_dim) * units  # the attentional vector
    if m.tie_embeddings:
        output = 2 * m.embedding_dim * target_vocab_size + (0 if units == m.embedding_dim else
                                                            2 * units * m.embedding_dim)
    else:
        output = 2 * units * target_vocab_size
    encoder *= source_per_target
    return {"encoder": encoder, "decoder": decoder, "output": output, "total": encoder + decoder + output}


def training_flops_per_token(*args, **kwargs):
    """Forward and backward FLOPs of one target token of a training step (3 × forward)."""
    return 3 * forward_flops_per_token(*args, **kwargs)["total"]


def corpus_lengths(pairs):
    """``(source_per_target, attended_source_length)`` of encoded pairs.

    Args:
      pairs: iterable of ``(source_ids, target_ids)``, each with its EOS.
    """
    source = target = weighted = 0
    for source_ids, target_ids in pairs:
        source += len(source_ids)
        target += len(target_ids)
        weighted += len(source_ids) * len(target_ids)
    return source / max(target, 1), weighted / max(target, 1)


def matmul_peak(size=2048, repeats=10, rounds=3):
    """float32 GFLOP/s of a size³ matrix product with TensorFlow's default threads: the best of
    ``rounds`` rounds of ``repeats`` products (after one warm-up)."""
    import tensorflow as tf

    a = tf.random.stateless_uniform([size, size], seed=[1, 2])
    b = tf.random.stateless_uniform([size, size], seed=[3, 4])

    @tf.function
    def products():
        total = tf.zeros([])
        for _ in range(repeats):
            total += tf.reduce_sum(tf.matmul(a + total * 0.0, b)[:1, :1])  # dependent: no reuse
        return total

    products().numpy()
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        products().numpy()
        best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 * repeats / best / 1e9


def model_dir_flops(model_dir):
    """Training FLOPs per target token of the model a model directory trains, with the source
    and target lengths of its training corpus under its own SentencePiece model(s)."""
    from seq2seq import vocabulary
    from seq2seq.corpus import corpus
    from seq2seq.model_dir import read_model_config
    from seq2seq.tokenizer import EOS_ID, Tokenizer

    config = read_model_config(model_dir)
    tokenizer = Tokenizer.load(model_dir, config.tokenizer.joint)
    _, sources, targets = zip(*corpus(config.data, "train").pairs())
    targets = [ids + [EOS_ID] for ids in tokenizer.encode_target(targets)]  # EOS is predicted too
    lengths = corpus_lengths(zip(tokenizer.encode_source(sources), targets))
    pieces = vocabulary.load(model_dir, config, tokenizer.target_vocab_size)
    output_size = tokenizer.target_vocab_size if pieces is None else len(pieces)
    return training_flops_per_token(config.model, output_size, *lengths)
