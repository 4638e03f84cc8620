"""The recurrent encoder-decoder with Bahdanau attention, as Keras 3 layers that serialize.

    source ids ─► Encoder ─► memory (values, projected keys, mask) ──┐
                     └─► bridge ─► initial decoder state             │
    target ids ─► Decoder: embedding ─► RNN stack ─► attention ◄─────┘
                                 ▲          └─► attentional vector ─► logits
                                 └── previous attentional vector (input feeding)

The decoder follows Luong et al. (2015) in its data flow (the top RNN layer's output queries
the attention; ``tanh(W [h; context])`` is the attentional vector that feeds the output layer
and, with input feeding, the next step's input) and Bahdanau et al. (2015, §A.1.2) in its
scoring function, ``score(q, k) = vᵀ tanh(W₁ q + W₂ k)``. It is the architecture of JoeyNMT's
recurrent decoder.

The recurrent layers are Keras's (they own the weights). On a CPU ``seq2seq.recurrent`` runs
them with each layer's input projection computed for all time steps before the time loop, and
both directions of the bidirectional encoder in one loop; where a GPU is visible, whole
sequences go through Keras's layers (cuDNN). With input feeding the decoder runs step
by step, through the same step function that search uses; training embeds all the steps'
input tokens, and projects them for the first recurrent layer, before the loop.
"""

import dataclasses
import functools

import keras
import numpy as np
import tensorflow as tf

from seq2seq import precision, recurrent
from seq2seq.attention import BahdanauAttention
from seq2seq.config import ModelConfig
from seq2seq.encoder import Encoder
from seq2seq.layers import GateNorm, WordDropout, call_with_weights, drops_after, embedding, rnn_layer, track
from seq2seq.output import OutputProjection, TiedOutput
from seq2seq.precision import resolve_bfloat16
from seq2seq.tokenizer import UNK_ID

__all__ = ["BahdanauAttention", "Decoder", "Encoder", "Seq2Seq", "TiedOutput"]


class Decoder(keras.layers.Layer):
    """Attentional recurrent decoder (see the module docstring for the data flow).

    State between steps is a dict: ``rnn``, one list of state tensors per layer ([h] for GRU
    and RNN, [h, c] for LSTM, each [batch, units]), and ``feed``, the previous attentional
    vector [batch, units] (zeros at the first step).
    """

    def __init__(self, vocab_size, embedding_dim, units, num_layers, cell, attention_units, input_feeding,
                 dropout, tie_embeddings=False, dropout_placement="attention_input", embedding_stddev=1.0,
                 output_bfloat16=False, word_dropout=0.0, layer_norm=False, output_pieces=None,
                 recurrent_bfloat16=False, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.embedding_dim, self.units = vocab_size, embedding_dim, units
        self.num_layers, self.cell, self.attention_units = num_layers, cell, attention_units
        self.input_feeding, self.dropout, self.tie_embeddings = input_feeding, dropout, tie_embeddings
        self.dropout_placement, self.embedding_stddev = dropout_placement, embedding_stddev
        self.output_bfloat16, self.recurrent_bfloat16 = output_bfloat16, recurrent_bfloat16
        self.bfloat16 = resolve_bfloat16(recurrent_bfloat16)  # every matmul before the output layer's
        self.output_pieces = None if output_pieces is None else tuple(output_pieces)
        output_size = vocab_size if output_pieces is None else len(output_pieces)
        self.word_dropout = WordDropout(word_dropout, name="word_dropout")
        self.embedding = embedding(vocab_size, embedding_dim, stddev=embedding_stddev)
        self.rnns = track(self, "rnn", [rnn_layer(cell, units, f"{cell}_{i}") for i in range(num_layers)])
        self.layer_norm = layer_norm  # each recurrent cell's projections layer-normalized (seq2seq.recurrent)
        self.norms = (track(self, "norm", [GateNorm(recurrent.GATES[cell], units, name=f"norm_{i}")
                                           for i in range(num_layers)]) if layer_norm else [None] * num_layers)
        self.dropouts = [keras.layers.Dropout(dropout, name=f"dropout_{i}") for i in range(num_layers + 1)]
        self.attention = BahdanauAttention(attention_units, self.bfloat16, name="attention")
        self.combine = keras.layers.Dense(units, activation="tanh", use_bias=False, name="combine")
        self.attention_dropout = keras.layers.Dropout(dropout, name="attention_dropout")
        self.output_dropout = keras.layers.Dropout(dropout, name="output_dropout")
        bfloat16 = resolve_bfloat16(output_bfloat16)  # the output layer's matmul (seq2seq/output.py)
        self.output_projection = (
            TiedOutput(self.embedding, units, output_pieces, bfloat16, name="tied_output")
            if tie_embeddings else OutputProjection(output_size, bfloat16, name="output_projection"))

    def build(self, target_shape, values_shape):
        batch, value_dim = target_shape[0], values_shape[-1]
        self.embedding.build(target_shape)
        features = self.embedding_dim + (self.units if self.input_feeding else 0)
        for rnn in self.rnns:
            rnn.build((batch, None, features))
            features = self.units
        for norm in self.norms:
            if norm is not None:
                norm.build()
        self.attention.build((batch, None, self.units), values_shape=values_shape)
        self.combine.build((batch, None, self.units + value_dim))
        self.output_projection.build((batch, None, self.units))
        self.built = True

    def _rnn_dropout(self, i, x, training):
        """Dropout after recurrent layer ``i``, where ``model.dropout_placement`` puts it."""
        if drops_after(i, self.num_layers, self.dropout_placement):
            x = self.dropouts[i + 1](x, training=training)
        return x

    def _attend(self, outputs, memory, training=False, weights=None, beam=1):
        """outputs: [batch, (tgt_len,) units] -> attentional vectors [batch, (tgt_len,) units], the
        attention weights [batch, (tgt_len,) src_len]. ``weights``: ``step_weights()``, made once
        before a time loop (default: made here). ``beam``: one step's rows come in groups of
        ``beam`` consecutive rows that share one source, the memory holding one row per group."""
        weights = self._attention_weights() if weights is None else weights
        attend = (self.attention if weights["query"] is None else
                  functools.partial(call_with_weights, self.attention, query_kernel=weights["query"]))
        if beam > 1:  # a group's queries attend together: [groups, beam, units]
            grouped = tf.reshape(outputs, [-1, beam, outputs.shape[-1]])
            context, attention = attend(grouped, memory["keys"], memory["values"], memory["mask"])
            context = tf.reshape(context, [-1, context.shape[-1]])
            attention = tf.reshape(attention, [-1, tf.shape(attention)[-1]])
        else:
            context, attention = attend(outputs, memory["keys"], memory["values"], memory["mask"])
        combined = tf.concat([outputs, context], axis=-1)
        if self.dropout_placement == "attention_input":
            combined = self.attention_dropout(combined, training=training)
        if weights["combine"] is None:
            return self.combine(combined), attention
        return tf.tanh(precision.matmul(combined, weights["combine"])), attention

    def logits(self, attentional, training=False, kernel=None):
        """attentional: [..., units] -> logits [..., output size] (``Seq2Seq.output_index``);
        ``kernel``: the output layer's ``step_kernel()``, made once before a time loop."""
        if self.dropout_placement == "all_outputs":
            attentional = self.output_dropout(attentional, training=training)
        if kernel is None:
            return self.output_projection(attentional)
        return call_with_weights(self.output_projection, attentional, kernel=kernel)

    def step(self, token, state, memory, training=False, weights=None, beam=1):
        """One decoding step.

        Args:
          token: int32 [batch], the previous target token (BOS at the first step).
          state: the decoder state (see the class docstring).
          memory: dict of ``values`` [batch, src_len, value_dim], ``keys`` [batch, src_len,
            attention_units], ``mask`` bool [batch, src_len].
          weights: ``step_weights()``, made once before a time loop (default: made here).
          beam: the rows come in groups of ``beam`` consecutive rows (a sentence's hypotheses)
            that share one source: ``memory`` then holds one row per group, [batch / beam, ...].
        Returns:
          attentional: float [batch, units], the input of ``logits``.
          state: the new decoder state.
          weights: float [batch, src_len], the attention over the source.
        """
        weights = self.step_weights() if weights is None else weights
        projected = self._project_embedded(self._embed(token, training), weights["embedded"])
        return self._step_projected(projected, state, memory, training, weights, beam)

    def _embed(self, tokens, training):
        """int32 [...] -> the embeddings after dropout, float [..., embedding_dim]."""
        return self.dropouts[0](self.word_dropout(self.embedding(tokens), training=training), training=training)

    def _project_embedded(self, embedded, kernel=None):
        """The embeddings' share of the first recurrent layer's input projection (its bias
        included): float [..., embedding_dim] -> [..., gates * units]. ``kernel``: the
        ``embedded`` of ``step_weights`` (default: made here)."""
        cell = self.rnns[0].cell
        kernel = cell.kernel[: self.embedding_dim] if kernel is None else kernel
        return recurrent.project_inputs(cell, embedded, kernel, self.bfloat16)

    def _attention_weights(self):
        """``query`` and ``combine`` of ``step_weights``."""
        if not self.bfloat16:
            return {"query": None, "combine": None}
        return {"query": self.attention.query_kernel(), "combine": precision.kernel(self.combine.kernel, True)}

    def step_weights(self, dtype=None):
        """The kernels a decoding step multiplies by, cast once before a time loop (a cast in the
        loop would convert the whole matrix at every step); ``dtype``: the step's (default: the
        layer's compute dtype). A dict of
          output: the output layer's ``step_kernel()``;
          embedded: the rows of the first recurrent layer's input kernel that the embedded token
            meets, [embedding_dim, gates * units], in ``dtype`` or bfloat16;
          feed: the rows of the first recurrent layer's input kernel that the input feed meets,
            [units, gates * units], in ``dtype`` or bfloat16 (None without input feeding);
        and, in bfloat16 with ``recurrent_bfloat16``, else None (the layers then read their own):
          input, recurrent: lists, each recurrent layer's input kernel (None for the first, which
            ``_project_embedded`` feeds) and recurrent kernel;
          query: the attention's query projection; combine: the attentional layer's kernel.
        """
        layers, dtype = len(self.rnns), dtype or self.compute_dtype
        weights = {"output": self.output_projection.step_kernel(), "feed": None, "input": [None] * layers,
                   "recurrent": [None] * layers, **self._attention_weights()}
        weights["embedded"] = precision.kernel(self.rnns[0].cell.kernel[: self.embedding_dim], self.bfloat16, dtype)
        if self.input_feeding:
            weights["feed"] = precision.kernel(self.rnns[0].cell.kernel[self.embedding_dim:], self.bfloat16, dtype)
        if self.bfloat16:
            weights["input"] = [None] + [precision.kernel(rnn.cell.kernel, True) for rnn in self.rnns[1:]]
            weights["recurrent"] = [precision.kernel(rnn.cell.recurrent_kernel, True) for rnn in self.rnns]
        return weights

    def _step_projected(self, projected, state, memory, training, weights=None, beam=1):
        """``step`` from the embedded token's projection [batch, gates * units] (``_project_embedded``).
        ``weights``: ``step_weights()``, made once before a time loop (default: made here)."""
        weights = self.step_weights(projected.dtype) if weights is None else weights
        if self.input_feeding:
            with tf.name_scope("input_feed"):
                projected += precision.matmul(state["feed"], weights["feed"])
        new_rnn_state, x = [], None  # x: the previous layer's output
        for i, (rnn, layer_state) in enumerate(zip(self.rnns, state["rnn"])):
            if i > 0:
                projected = recurrent.project_inputs(rnn.cell, x, weights["input"][i])
            x, cell_state = recurrent.cell_step(rnn.cell, projected, list(layer_state), self.norms[i],
                                                weights["recurrent"][i])
            new_rnn_state.append(cell_state)
            x = self._rnn_dropout(i, x, training)
        attentional, attention = self._attend(x, memory, training, weights, beam)
        return attentional, {"rnn": new_rnn_state, "feed": attentional}, attention

    def call(self, target_in, state, memory, training=False):
        """Teacher-forced decoding of a whole target sequence.

        Args:
          target_in: int32 [batch, tgt_len], ``[BOS] + target[:-1]``.
          state: the initial decoder state (from ``Seq2Seq.initial_state``).
          memory: as in ``step``.
        Returns:
          attentional: float [batch, tgt_len, units].
          weights: float [batch, tgt_len, src_len].
        """
        embedded = self._embed(target_in, training)
        if recurrent.fused_kernel_available() and not (self.input_feeding or self.layer_norm):  # Keras's, in cuDNN
            x = embedded
            for i, (rnn, layer_state) in enumerate(zip(self.rnns, state["rnn"])):
                x, *_ = rnn(x, initial_state=list(layer_state), training=training)
                x = self._rnn_dropout(i, x, training)
            return self._attend(x, memory, training)
        projected = self._project_embedded(embedded)  # [batch, tgt_len, gates * units]
        if self.input_feeding:
            return self._call_stepwise(projected, state, memory, training)
        x = None  # the previous layer's output
        for i, (rnn, layer_state) in enumerate(zip(self.rnns, state["rnn"])):
            if i > 0:
                projected = recurrent.project_inputs(rnn.cell, x, bfloat16=self.bfloat16)
            x, _ = recurrent.run(rnn.cell, projected, initial_states=list(layer_state), norms=self.norms[i],
                                 bfloat16=self.bfloat16)
            x = self._rnn_dropout(i, x, training)
        return self._attend(x, memory, training)

    def _call_stepwise(self, projected, state, memory, training):
        # The embeddings and their share of the first layer's input projection are computed
        # for every step before the loop and read from a TensorArray: in the loop, the
        # backward pass of a lookup, or of a slice of a tensor from outside the loop, makes a
        # dense gradient of that whole tensor at every step, summed over the steps.
        steps = tf.shape(projected)[1]
        inputs = tf.TensorArray(projected.dtype, size=steps).unstack(tf.transpose(projected, [1, 0, 2]))
        step_weights = self.step_weights(projected.dtype)
        outputs = tf.TensorArray(self.compute_dtype, size=steps)
        weights = tf.TensorArray(self.compute_dtype, size=steps)

        def body(t, state, outputs, weights):
            attentional, state, w = self._step_projected(inputs.read(t), state, memory, training, step_weights)
            return t + 1, state, outputs.write(t, attentional), weights.write(t, w)

        _, _, outputs, weights = tf.while_loop(
            lambda t, *_: t < steps, body, (tf.constant(0), state, outputs, weights))
        return tf.transpose(outputs.stack(), [1, 0, 2]), tf.transpose(weights.stack(), [1, 0, 2])

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "embedding_dim": self.embedding_dim,
                "units": self.units, "num_layers": self.num_layers, "cell": self.cell,
                "attention_units": self.attention_units, "input_feeding": self.input_feeding,
                "dropout": self.dropout, "tie_embeddings": self.tie_embeddings,
                "dropout_placement": self.dropout_placement, "embedding_stddev": self.embedding_stddev,
                "output_bfloat16": self.output_bfloat16, "word_dropout": self.word_dropout.rate,
                "layer_norm": self.layer_norm, "recurrent_bfloat16": self.recurrent_bfloat16,
                "output_pieces": None if self.output_pieces is None else list(self.output_pieces)}


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
                               o["word_dropout"], o["layer_norm"], o["recurrent_bfloat16"], name="encoder")
        self.decoder = Decoder(target_vocab_size, o["embedding_dim"], o["units"], o["decoder_layers"], o["cell"],
                               o["attention_units"] or o["units"], o["input_feeding"], o["dropout"],
                               o["tie_embeddings"], o["dropout_placement"], o["embedding_stddev"],
                               o["output_bfloat16"], o["word_dropout"], o["layer_norm"], output_pieces,
                               o["recurrent_bfloat16"], name="decoder")
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

    def step_weights(self):
        """The weights ``decode_step`` multiplies by, made once before a search's time loop
        (``Decoder.step_weights``)."""
        return self.decoder.step_weights()

    def decode_step(self, token, state, memory, weights=None, beam=1):
        """One inference step: token int32 [batch] (a target id) -> float32 logits [batch, output
        size] of the next token (search normalizes only the ones it keeps; ``target_ids`` maps
        their indices to ids), new state, attention weights [batch, src_len]. ``weights``:
        ``step_weights()`` (default: made here). ``beam``: the rows are groups of ``beam``
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
