"""The recurrent encoder-decoder with Bahdanau attention, as Keras 3 layers that serialize.

    source ids ─► Encoder ─► memory (values, projected keys, mask) ──┐
                     └─► bridge ─► initial decoder state             │
    target ids ─► Decoder: embedding ─► RNN stack ─► attention ◄─────┘
                                 ▲          └─► attentional vector ─► logits
                                 └── previous attentional vector (input feeding)

The decoder (``seq2seq.decoder``) follows Luong et al. (2015) in its data flow and Bahdanau et
al. (2015) in its scoring function: the architecture of JoeyNMT's recurrent decoder.

The recurrent layers are Keras's (they own the weights). On a CPU ``seq2seq.recurrent`` runs
them with each layer's input projection computed for all time steps before the time loop, and
both directions of the bidirectional encoder in one loop; where a GPU is visible, whole
sequences go through Keras's layers (cuDNN). With input feeding the decoder runs step
by step, through the same step function that search uses; training embeds all the steps'
input tokens, and projects them for the first recurrent layer, before the loop.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from seq2seq.attention import BahdanauAttention
from seq2seq.config import ModelConfig
from seq2seq.decoder import Decoder
from seq2seq.encoder import Encoder
from seq2seq.output import TiedOutput
from seq2seq.tokenizer import UNK_ID

__all__ = ["BahdanauAttention", "Decoder", "Encoder", "Seq2Seq", "TiedOutput"]


class Seq2Seq(keras.Model):
    """Encoder, bridge and decoder. ``call((source, target_in))`` returns logits for training;
    ``encode``, ``initial_state`` and ``decode_step`` are what search uses.

    The output layer's index i scores target id ``output_pieces[i]`` (seq2seq/vocabulary.py),
    or id i where ``output_pieces`` is None; ``output_index`` and ``target_ids`` map between the
    two."""

    def __init__(self, source_vocab_size, target_vocab_size, output_pieces=None, **options):
        """``output_pieces``: the ascending target ids the output layer scores, None for all.
        ``options``: the keys of ``ModelConfig`` (seq2seq/config.py documents them and holds
        their defaults); any other keyword goes to ``keras.Model`` (``name``, ``dtype``, ...)."""
        defaults = {field.name: field.default for field in dataclasses.fields(ModelConfig)}
        super().__init__(**{key: options.pop(key) for key in list(options) if key not in defaults})
        o = {**defaults, **options}
        if o["attention"] != "bahdanau":
            raise ValueError(f"unknown attention {o['attention']!r}")
        output_pieces = None if output_pieces is None else [int(i) for i in output_pieces]
        self.settings = {"source_vocab_size": source_vocab_size, "target_vocab_size": target_vocab_size,
                         "output_pieces": output_pieces, **o}
        self.output_size = target_vocab_size if output_pieces is None else len(output_pieces)
        self._pieces = self._indices = None
        if output_pieces is not None:
            indices = np.full(target_vocab_size, output_pieces.index(UNK_ID), np.int32)
            indices[output_pieces] = np.arange(len(output_pieces))
            self._pieces, self._indices = tf.constant(output_pieces, tf.int32), tf.constant(indices)
        self.cell_type, self.units, self.decoder_layers = o["cell"], o["units"], o["decoder_layers"]
        self.bidirectional, self.bridge_from = o["bidirectional"], o["bridge"]
        self.encoder = Encoder(source_vocab_size, o["embedding_dim"], o["units"], o["encoder_layers"], o["cell"],
                               o["bidirectional"], o["dropout"], o["dropout_placement"], o["embedding_stddev"],
                               o["word_dropout"], o["layer_norm"], o["recurrent_bfloat16"],
                               o["variational_dropout"], name="encoder")
        self.decoder = Decoder(target_vocab_size, o["embedding_dim"], o["units"], o["decoder_layers"], o["cell"],
                               o["attention_units"] or o["units"], o["input_feeding"], o["dropout"],
                               o["tie_embeddings"], o["dropout_placement"], o["embedding_stddev"],
                               o["output_bfloat16"], o["word_dropout"], o["layer_norm"], output_pieces,
                               o["recurrent_bfloat16"], o["variational_dropout"], name="decoder")
        # Bridge: each decoder layer's initial h = tanh(W · s), s the mean of the encoder outputs
        # (Nematus) or its last states, forward and backward (JoeyNMT).
        self.bridge = keras.layers.Dense(o["units"] * o["decoder_layers"], activation="tanh", name="bridge")

    @classmethod
    def from_config_section(cls, model_config, source_vocab_size, target_vocab_size, output_pieces=None):
        """Builds the model described by a ``ModelConfig`` and builds its weights."""
        model = cls(source_vocab_size, target_vocab_size, output_pieces, **dataclasses.asdict(model_config))
        model.build_weights()
        return model

    def build(self, input_shape=None):
        """Creates the encoder's, the decoder's and the bridge's weights (any input shape)."""
        self.encoder.build((None, None))
        self.decoder.build((None, None), (None, None, self.encoder.output_dim))
        self.bridge.build((None, self.encoder.output_dim))
        self.built = True

    def build_weights(self):
        """Creates every weight and runs one tiny batch through training's and search's paths."""
        self.build()
        source = tf.constant([[4, 3]], tf.int32)
        self((source, tf.constant([[2, 4]], tf.int32)))
        memory, state = self.encode(source)
        self.decode_step(tf.constant([2], tf.int32), state, memory)

    def encode(self, source, training=False):
        """Encodes the source once for decoding.

        Args:
          source: int32 [batch, src_len], each row ``pieces + [EOS]`` padded with PAD_ID.
        Returns:
          memory: dict of ``values`` float [batch, src_len, value_dim], ``keys`` float
            [batch, src_len, attention_units] (projected once here) and ``mask`` bool [batch, src_len].
          state: the decoder's initial state.
        """
        values, mask = self.encoder(source, training=training)
        memory = {"values": values, "keys": self.decoder.attention.project_keys(values), "mask": mask}
        return memory, self.initial_state(memory)

    def initial_state(self, memory):
        """The decoder state before the first step, from the encoder outputs: their masked mean, or
        their last states (the forward direction's at the last source token, the backward
        direction's at the first)."""
        values = memory["values"]
        if self.bridge_from == "last":
            lengths = tf.reduce_sum(tf.cast(memory["mask"], tf.int32), axis=1)
            last = tf.gather(values, tf.maximum(lengths - 1, 0), batch_dims=1)  # [batch, value_dim]
            summary = tf.concat([last[:, : self.units], values[:, 0, self.units:]], -1) if self.bidirectional else last
        else:
            mask = tf.cast(memory["mask"], values.dtype)[:, :, None]
            summary = tf.reduce_sum(values * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
        hidden = tf.split(self.bridge(summary), self.decoder_layers, axis=-1)
        zeros = tf.zeros_like(hidden[0])
        rnn = [[h, zeros] if self.cell_type == "lstm" else [h] for h in hidden]
        return {"rnn": rnn, "feed": zeros}

    def output_index(self, ids):
        """Target ids int32 [...] -> their output indices [...] (ids outside the output vocabulary
        -> ``<unk>``'s)."""
        return ids if self._indices is None else tf.gather(self._indices, ids)

    def target_ids(self, indices):
        """Output indices int32 [...] -> the target ids they score [...]."""
        return indices if self._pieces is None else tf.gather(self._pieces, indices)

    def step_weights(self, output_multiple=1):
        """The weights ``decode_step`` multiplies by, made once before a search's time loop
        (``Decoder.step_weights``): with ``output_multiple``, ``decode_step`` returns the logits
        of the output size rounded up to a multiple of it, the extra ones −inf."""
        return self.decoder.step_weights(output_multiple=output_multiple)

    def decode_step(self, token, state, memory, weights=None, beam=1):
        """One inference step: token int32 [batch] (a target id) -> float32 logits [batch, output
        size] of the next token (search normalizes only the ones it keeps; ``target_ids`` maps
        their indices to ids), new state, attention weights [batch, src_len]. ``weights``:
        ``step_weights()`` (default: made here); from ``step_weights(m)`` the logits are padded
        with −inf to a multiple of m. ``beam``: the rows are groups of ``beam``
        hypotheses of one sentence each, and ``memory`` (from ``encode``) has one row per group."""
        weights = self.step_weights() if weights is None else weights
        attentional, state, attention = self.decoder.step(token, state, memory, weights=weights, beam=beam)
        return self.output_logits(attentional, kernel=weights["output"]), state, attention

    def attentional(self, inputs, training=False):
        """Teacher-forced decoding up to the output layer.

        Args:
          inputs: ``(source, target_in)``: int32 [batch, src_len] and int32 [batch, tgt_len].
        Returns:
          float attentional vectors [batch, tgt_len, units], the input of ``output_logits``.
        """
        source, target_in = inputs
        memory, state = self.encode(source, training=training)
        return self.decoder(target_in, state, memory, training=training)[0]

    def output_logits(self, attentional, training=False, kernel=None):
        """attentional: [..., units] -> float32 logits [..., output size]; ``kernel``: the output
        layer's ``step_kernel()``, made once before a time loop."""
        return tf.cast(self.decoder.logits(attentional, training=training, kernel=kernel), tf.float32)

    def call(self, inputs, training=False):
        """Teacher-forced logits: ``inputs`` as in ``attentional`` -> float32 logits [batch,
        tgt_len, output size]."""
        return self.output_logits(self.attentional(inputs, training=training), training=training)

    def get_config(self):
        return {**super().get_config(), **self.settings}
