"""The encoder: embeddings and a stack of (bidirectional) recurrent layers."""

import keras
import tensorflow as tf

from seq2seq import recurrent
from seq2seq.layers import RNN_LAYERS, Dropout, GateNorm, WordDropout, drops_after, embedding, track
from seq2seq.precision import resolve_bfloat16
from seq2seq.tokenizer import PAD_ID


class Encoder(keras.layers.Layer):
    """Embedding, dropout, and a stack of (bidirectional) GRU/LSTM/RNN layers with dropout between
    (with ``layer_norm``, each cell's projections layer-normalized: ``seq2seq.recurrent``; with
    ``recurrent_bfloat16``, their matmuls in bfloat16: ``seq2seq.precision``)."""

    def __init__(self, vocab_size, embedding_dim, units, num_layers, cell, bidirectional, dropout,
                 dropout_placement="attention_input", embedding_stddev=1.0, word_dropout=0.0, layer_norm=False,
                 recurrent_bfloat16=False, variational_dropout=False, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.embedding_dim, self.units = vocab_size, embedding_dim, units
        self.num_layers, self.cell, self.bidirectional, self.dropout = num_layers, cell, bidirectional, dropout
        self.dropout_placement, self.embedding_stddev = dropout_placement, embedding_stddev
        self.word_dropout = WordDropout(word_dropout, name="word_dropout")
        self.embedding = embedding(vocab_size, embedding_dim, mask_zero=True, stddev=embedding_stddev)
        rnns = []
        for i in range(num_layers):
            layer = RNN_LAYERS[cell](units, return_sequences=True, name=f"{cell}_{i}")
            if bidirectional:
                layer = keras.layers.Bidirectional(layer, merge_mode="concat", name=f"bi_{cell}_{i}")
            rnns.append(layer)
        self.rnns = track(self, "rnn", rnns)
        self.layer_norm = layer_norm
        self.recurrent_bfloat16 = recurrent_bfloat16
        self.bfloat16 = resolve_bfloat16(recurrent_bfloat16)
        directions = ("forward", "backward") if bidirectional else ("forward",)
        self.norms = [track(self, f"norm_{i}", [GateNorm(recurrent.GATES[cell], units, name=f"norm_{i}_{d}")
                                                for d in directions]) if layer_norm else None
                      for i in range(num_layers)]
        self.variational_dropout = variational_dropout
        self.dropouts = [Dropout(dropout, variational_dropout, name=f"dropout_{i}") for i in range(num_layers + 1)]

    @property
    def output_dim(self):
        return self.units * (2 if self.bidirectional else 1)

    def build(self, source_shape):
        self.embedding.build(source_shape)
        features = self.embedding_dim
        for rnn in self.rnns:
            rnn.build((None, None, features))
            features = self.output_dim
        for norm in sum((n or [] for n in self.norms), []):
            norm.build()
        self.built = True

    def _run_rnn(self, rnn, x, mask, norms, training=False):
        """One (bidirectional) layer over the sequence: x [batch, src_len, features] -> [batch,
        src_len, output_dim], both directions in one time loop (Keras's layer on a GPU, for cuDNN,
        unless layer-normalized); ``norms``: the layer's GateNorms or None."""
        if recurrent.fused_kernel_available() and not self.layer_norm:
            return rnn(x, mask=mask)
        if self.bidirectional:
            cells = [rnn.forward_layer.cell, rnn.backward_layer.cell]
            return recurrent.run(cells, [recurrent.project_inputs(cell, x, bfloat16=self.bfloat16) for cell in cells],
                                 mask, norms=norms, bfloat16=self.bfloat16, training=bool(training))[0]
        return recurrent.run(rnn.cell, recurrent.project_inputs(rnn.cell, x, bfloat16=self.bfloat16), mask,
                             norms=None if norms is None else norms[0], bfloat16=self.bfloat16,
                             training=bool(training))[0]

    def call(self, source, training=False):
        """Encodes source ids.

        Args:
          source: int32 [batch, src_len], padded with PAD_ID (0).
        Returns:
          outputs: float [batch, src_len, output_dim], zero at padding.
          mask: bool [batch, src_len], False at padding.
        """
        mask = tf.not_equal(source, PAD_ID)
        x = self.dropouts[0](self.word_dropout(self.embedding(source), training=training), training=training)
        for i, (rnn, dropout) in enumerate(zip(self.rnns, self.dropouts[1:])):
            x = self._run_rnn(rnn, x, mask, self.norms[i], training)
            if drops_after(i, self.num_layers, self.dropout_placement):
                x = dropout(x, training=training)
        x = x * tf.cast(mask, x.dtype)[:, :, None]
        return x, mask

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "embedding_dim": self.embedding_dim,
                "units": self.units, "num_layers": self.num_layers, "cell": self.cell,
                "bidirectional": self.bidirectional, "dropout": self.dropout,
                "dropout_placement": self.dropout_placement, "embedding_stddev": self.embedding_stddev,
                "word_dropout": self.word_dropout.rate, "layer_norm": self.layer_norm,
                "recurrent_bfloat16": self.recurrent_bfloat16, "variational_dropout": self.variational_dropout}
