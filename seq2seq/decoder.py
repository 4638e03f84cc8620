"""The attentional recurrent decoder (``seq2seq.model`` draws the whole model).

The decoder follows Luong et al. (2015) in its data flow (the top RNN layer's output queries
the attention; ``tanh(W [h; context])`` is the attentional vector that feeds the output layer
and, with input feeding, the next step's input) and Bahdanau et al. (2015, §A.1.2) in its
scoring function, ``score(q, k) = vᵀ tanh(W₁ q + W₂ k)``. It is the architecture of JoeyNMT's
recurrent decoder.

With input feeding the decoder runs step by step, through the same step function that search
uses; training embeds all the steps' input tokens, projects them for the first recurrent layer
and draws every step's dropout masks before the time loop, and makes the loop's weight
gradients after it (``seq2seq.loop_products``). The kernels a step multiplies by are made once
before a time loop (``Decoder.step_weights``).
"""

import functools

import keras
import tensorflow as tf

from seq2seq import precision, recurrent
from seq2seq.attention import BahdanauAttention
from seq2seq.loop_products import LoopProducts, Product, Steps, stopped
from seq2seq.layers import Dropout, GateNorm, WordDropout, call_with_weights, drops_after, embedding, rnn_layer, track
from seq2seq.output import OutputProjection, TiedOutput
from seq2seq.precision import resolve_bfloat16


class Decoder(keras.layers.Layer):
    """Attentional recurrent decoder (see the module docstring for the data flow).

    State between steps is a dict: ``rnn``, one list of state tensors per layer ([h] for GRU
    and RNN, [h, c] for LSTM, each [batch, units]), and ``feed``, the previous attentional
    vector [batch, units] (zeros at the first step).
    """

    def __init__(self, vocab_size, embedding_dim, units, num_layers, cell, attention_units, input_feeding,
                 dropout, tie_embeddings=False, dropout_placement="attention_input", embedding_stddev=1.0,
                 output_bfloat16=False, word_dropout=0.0, layer_norm=False, output_pieces=None,
                 recurrent_bfloat16=False, variational_dropout=False, **kwargs):
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
        self.variational_dropout = variational_dropout  # one mask per sentence for all its steps
        self.dropouts = [Dropout(dropout, variational_dropout, name=f"dropout_{i}") for i in range(num_layers + 1)]
        self.attention = BahdanauAttention(attention_units, self.bfloat16, name="attention")
        self.combine = keras.layers.Dense(units, activation="tanh", use_bias=False, name="combine")
        self.attention_dropout = Dropout(dropout, variational_dropout, name="attention_dropout")
        self.output_dropout = Dropout(dropout, variational_dropout, name="output_dropout")
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

    def _rnn_dropout(self, i, x, training, mask=None):
        """Dropout after recurrent layer ``i``, where ``model.dropout_placement`` puts it; ``mask``:
        the step's from ``_step_masks`` (default: drawn here)."""
        if not drops_after(i, self.num_layers, self.dropout_placement):
            return x
        return self.dropouts[i + 1](x, training=training) if mask is None else x * mask

    def _step_masks(self, steps, batch, value_dim, training):
        """The dropout masks of every step of a teacher-forced time loop, drawn before it: one draw
        of [steps, batch, features] per dropout layer rather than one per step. A dict of ``rnn``,
        a TensorArray per recurrent layer (None where no dropout follows it), and ``attention``,
        a TensorArray for the attentional layer's input (None unless ``dropout_placement`` is
        ``attention_input``); each step multiplies by its [batch, features] (0, or 1 / (1 - the
        layer's ``drop_rate``); with ``variational_dropout``, the same at every step). None outside
        training or without dropout."""
        if not training or self.dropout == 0:
            return None

        def draw(layer, features):
            if self.variational_dropout:
                mask = layer.mask(tf.stack([1, batch, features]), features, self.compute_dtype)
                mask = tf.broadcast_to(mask, tf.stack([steps, batch, features]))
            else:
                mask = layer.mask(tf.stack([steps, batch, features]), features, self.compute_dtype)
            return tf.TensorArray(self.compute_dtype, size=steps).unstack(mask)

        rnn = [draw(self.dropouts[i + 1], self.units) if drops_after(i, self.num_layers, self.dropout_placement)
               else None for i in range(self.num_layers)]
        attention = (draw(self.attention_dropout, self.units + value_dim)
                     if self.dropout_placement == "attention_input" else None)
        return {"rnn": rnn, "attention": attention}

    def _attend(self, outputs, memory, training=False, weights=None, beam=1, mask=None, loop=None):
        """outputs: [batch, (tgt_len,) units] -> attentional vectors [batch, (tgt_len,) units], the
        attention weights [batch, (tgt_len,) src_len]. ``weights``: ``step_weights()``, made once
        before a time loop (default: made here). ``beam``: one step's rows come in groups of
        ``beam`` consecutive rows that share one source, the memory holding one row per group.
        ``mask``: the step's dropout mask of the attentional layer's input (``_step_masks``).
        ``loop``: a step of a probed loop (``_step_projected``)."""
        weights = self._attention_weights() if weights is None else weights
        attend = (self.attention if weights["query"] is None else
                  functools.partial(call_with_weights, self.attention, query_kernel=weights["query"],
                                    probes=loop and loop["probes"]))
        if beam > 1:  # a group's queries attend together: [groups, beam, units]
            grouped = tf.reshape(outputs, [-1, beam, outputs.shape[-1]])
            context, attention = attend(grouped, memory["keys"], memory["values"], memory["mask"])
            context = tf.reshape(context, [-1, context.shape[-1]])
            attention = tf.reshape(attention, [-1, tf.shape(attention)[-1]])
        else:
            context, attention = attend(outputs, memory["keys"], memory["values"], memory["mask"])
        combined = tf.concat([outputs, context], axis=-1)
        if self.dropout_placement == "attention_input":
            combined = self.attention_dropout(combined, training=training) if mask is None else combined * mask
        if weights["combine"] is None:
            return self.combine(combined), attention
        product = precision.matmul(combined, weights["combine"])
        if loop:
            loop["inputs"].update(query=outputs, combine=combined, context=attention)
            product += loop["probes"]["combine"]
        return tf.tanh(product), attention

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

    def _project_embedded(self, embedded, kernel):
        """The embeddings' share of the first recurrent layer's input projection (its bias
        included): float [..., embedding_dim] -> [..., gates * units]. ``kernel``: the
        ``embedded`` of ``step_weights``."""
        return recurrent.project_inputs(self.rnns[0].cell, embedded, kernel, self.bfloat16)

    def _attention_weights(self):
        """``query`` and ``combine`` of ``step_weights``."""
        if not self.bfloat16:
            return {"query": None, "combine": None}
        return {"query": self.attention.query_kernel(), "combine": precision.kernel(self.combine.kernel, True)}

    def _first_rows(self):
        """The first recurrent layer's input kernel as the rows the embedded token meets and,
        with input feeding, the rows the input feed meets: one split, whose gradient is one
        concatenation, where each of two slices' would be a whole kernel of zeros around its rows."""
        first = self.rnns[0].cell.kernel  # [embedding_dim (+ units with input feeding), gates * units]
        if not self.input_feeding:
            return [first]
        return tf.split(first, [self.embedding_dim, first.shape[0] - self.embedding_dim])

    def step_weights(self, dtype=None, output_multiple=1, first_rows=None):
        """The kernels a decoding step multiplies by, cast once before a time loop (a cast in the
        loop would convert the whole matrix at every step); ``dtype``: the step's (default: the
        layer's compute dtype). A dict of
          output: the output layer's ``step_kernel(output_multiple)``, its output columns padded up
            to a multiple of ``output_multiple`` (their logits −inf);
          embedded: the rows of the first recurrent layer's input kernel that the embedded token
            meets, [embedding_dim, gates * units], in ``dtype`` or bfloat16;
          feed: the rows of the first recurrent layer's input kernel that the input feed meets,
            [units, gates * units], in ``dtype`` or bfloat16 (None without input feeding);
        and, in bfloat16 with ``recurrent_bfloat16``, else None (the layers then read their own):
          input, recurrent: lists, each recurrent layer's input kernel (None for the first, which
            ``_project_embedded`` feeds) and recurrent kernel;
          query: the attention's query projection; combine: the attentional layer's kernel.
        ``first_rows``: ``_first_rows()``, where the caller has made them already.
        """
        layers, dtype = len(self.rnns), dtype or self.compute_dtype
        weights = {"output": self.output_projection.step_kernel(output_multiple), "feed": None, "input": [None] * layers,
                   "recurrent": [None] * layers, **self._attention_weights()}
        rows = self._first_rows() if first_rows is None else first_rows
        weights["embedded"] = precision.kernel(rows[0], self.bfloat16, dtype)
        if self.input_feeding:
            weights["feed"] = precision.kernel(rows[1], self.bfloat16, dtype)
        if self.bfloat16:
            weights["input"] = [None] + [precision.kernel(rnn.cell.kernel, True) for rnn in self.rnns[1:]]
            weights["recurrent"] = [precision.kernel(rnn.cell.recurrent_kernel, True) for rnn in self.rnns]
        return weights

    def _step_projected(self, projected, state, memory, training, weights=None, beam=1, masks=None, loop=None):
        """``step`` from the embedded token's projection [batch, gates * units] (``_project_embedded``).
        ``weights``: ``step_weights()``, made once before a time loop (default: made here).
        ``masks``: the step's dropout masks, ``_step_masks`` read at the step (default: drawn here).
        ``loop``: in a probed time loop (``_call_stepwise``), a dict of the step's ``probes``
        (``LoopProducts.probes``) and ``inputs``, which the step fills with its products' inputs."""
        masks = masks or {"rnn": [None] * len(self.rnns), "attention": None}
        weights = self.step_weights(projected.dtype) if weights is None else weights
        probes = loop["probes"] if loop else {}
        if loop:
            loop["inputs"].update({f"recurrent_{i}": layer_state[0] for i, layer_state in enumerate(state["rnn"])})
        if self.input_feeding:
            with tf.name_scope("input_feed"):
                projected += precision.matmul(state["feed"], weights["feed"])
                if loop:
                    loop["inputs"]["feed"] = state["feed"]
                    projected += probes["feed"]
        new_rnn_state, x = [], None  # x: the previous layer's output
        for i, (rnn, layer_state) in enumerate(zip(self.rnns, state["rnn"])):
            if i > 0:
                projected = recurrent.project_inputs(rnn.cell, x, weights["input"][i])
                if loop:
                    loop["inputs"][f"input_{i}"] = x
                    projected += probes[f"input_{i}"]
            x, cell_state = recurrent.cell_step(rnn.cell, projected, list(layer_state), self.norms[i],
                                                weights["recurrent"][i], probes.get(f"recurrent_{i}"))
            new_rnn_state.append(cell_state)
            x = self._rnn_dropout(i, x, training, masks["rnn"][i])
        attentional, attention = self._attend(x, memory, training, weights, beam, masks["attention"], loop)
        return attentional, {"rnn": new_rnn_state, "feed": attentional}, attention

    def call(self, target_in, state, memory, training=False):
        """Teacher-forced decoding of a whole target sequence.

        Args:
          target_in: int32 [batch, tgt_len], ``[BOS] + target[:-1]``.
          state: the initial decoder state (from ``Seq2Seq.initial_state``).
          memory: as in ``step``.
        Returns:
          attentional: float [batch, tgt_len, units].
          weights: float [batch, tgt_len, src_len]; in training with input feeding they carry
            no gradient (the loop products record them as bits, ``seq2seq.loop_products``).
        """
        embedded = self._embed(target_in, training)
        if recurrent.fused_kernel_available() and not (self.input_feeding or self.layer_norm):  # Keras's, in cuDNN
            x = embedded
            for i, (rnn, layer_state) in enumerate(zip(self.rnns, state["rnn"])):
                x, *_ = rnn(x, initial_state=list(layer_state), training=training)
                x = self._rnn_dropout(i, x, training)
            return self._attend(x, memory, training)
        first_rows = self._first_rows()
        step_weights = self.step_weights(embedded.dtype, first_rows=first_rows)
        projected = self._project_embedded(embedded, step_weights["embedded"])  # [batch, tgt_len, gates * units]
        if self.input_feeding:
            return self._call_stepwise(projected, state, memory, training, step_weights, first_rows[1])
        x = None  # the previous layer's output
        for i, (rnn, layer_state) in enumerate(zip(self.rnns, state["rnn"])):
            if i > 0:
                projected = recurrent.project_inputs(rnn.cell, x, bfloat16=self.bfloat16)
            x, _ = recurrent.run(rnn.cell, projected, initial_states=list(layer_state), norms=self.norms[i],
                                 bfloat16=self.bfloat16, training=bool(training))
            x = self._rnn_dropout(i, x, training)
        return self._attend(x, memory, training)

    def _call_stepwise(self, projected, state, memory, training, step_weights, feed_rows=None):
        # The embeddings and their share of the first layer's input projection are computed
        # for every step before the loop and popped from a list (``loop_products.Steps``): in the loop, the
        # backward pass of a lookup, or of a slice of a tensor from outside the loop, makes a
        # dense gradient of that whole tensor at every step, summed over the steps.
        steps, batch = tf.shape(projected)[1], tf.shape(projected)[0]
        inputs = Steps(tf.reverse(tf.transpose(projected, [1, 0, 2]), [0]))  # popped step by step, last first
        masks = self._step_masks(steps, batch, memory["values"].shape[-1], training)
        products = None
        if training:  # the loop multiplies by kernels whose gradients ``products`` makes after it
            feed_rows = self._first_rows()[1] if feed_rows is None else feed_rows
            products, kernels = self._loop_products(steps, batch, memory, projected.dtype, feed_rows)
            step_weights = {**step_weights, **kernels}
            memory = {**memory, "values": tf.stop_gradient(memory["values"])}
        outputs = tf.TensorArray(self.compute_dtype, size=steps)
        weights = tf.TensorArray(self.compute_dtype, size=steps)
        recorded = products.arrays() if products else {}

        def body(t, state, outputs, weights, recorded, pending):
            step_masks = masks and tf.nest.map_structure(lambda mask: mask if mask is None else mask.read(t), masks)
            loop = None
            if products:
                probes, recorded = products.probes(recorded)
                loop = {"probes": probes, "inputs": {}}
            pending, projected = inputs.pop(pending)
            attentional, new_state, w = self._step_projected(projected, state, memory, training, step_weights,
                                                             masks=step_masks, loop=loop)
            outputs = outputs.write(t, attentional)
            if products:  # the attention weights are the context product's recorded inputs
                return t + 1, new_state, outputs, weights, products.record(recorded, t, loop["inputs"]), pending
            return t + 1, new_state, outputs, weights.write(t, w), recorded, pending

        _, _, outputs, weights, recorded, _ = tf.while_loop(
            lambda t, *_: t < steps, body, (tf.constant(0), state, outputs, weights, recorded, inputs.initial))
        if products:
            products.finish(recorded)
            return tf.transpose(outputs.stack(), [1, 0, 2]), tf.transpose(products.inputs("context"), [1, 0, 2])
        return tf.transpose(outputs.stack(), [1, 0, 2]), tf.transpose(weights.stack(), [1, 0, 2])

    def _loop_products(self, steps, batch, memory, dtype, feed_rows):
        """The teacher-forced time loop's ``LoopProducts`` (``seq2seq.loop_products``) and the
        ``step_weights`` entries the loop multiplies by instead: its kernels, gradients stopped.
        ``feed_rows``: the input feed's rows of the first layer's input kernel (``_first_rows``)."""
        gates = self.rnns[0].cell.recurrent_kernel.shape[-1]
        weights = {"query": self.attention.query_projection.kernel, "combine": self.combine.kernel}
        sizes = {"query": self.attention_units, "combine": self.units}
        if self.input_feeding:
            weights["feed"], sizes["feed"] = feed_rows, gates
        for i, rnn in enumerate(self.rnns):
            weights[f"recurrent_{i}"], sizes[f"recurrent_{i}"] = rnn.cell.recurrent_kernel, gates
            if i > 0:
                weights[f"input_{i}"], sizes[f"input_{i}"] = rnn.cell.kernel, gates
        products = {name: Product(tf.convert_to_tensor(weight), "matrix", [batch, sizes[name]])
                    for name, weight in weights.items()}
        products["context"] = Product(memory["values"], "memory", [batch, memory["values"].shape[-1]])
        kernels = {name: stopped(product.weight, self.bfloat16, dtype) for name, product in products.items()
                   if product.kind == "matrix"}
        return LoopProducts(products, steps, dtype, self.bfloat16), {
            "query": kernels["query"], "combine": kernels["combine"], "feed": kernels.get("feed"),
            "recurrent": [kernels[f"recurrent_{i}"] for i in range(self.num_layers)],
            "input": [None] + [kernels[f"input_{i}"] for i in range(1, self.num_layers)]}

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "embedding_dim": self.embedding_dim,
                "units": self.units, "num_layers": self.num_layers, "cell": self.cell,
                "attention_units": self.attention_units, "input_feeding": self.input_feeding,
                "dropout": self.dropout, "tie_embeddings": self.tie_embeddings,
                "dropout_placement": self.dropout_placement, "embedding_stddev": self.embedding_stddev,
                "output_bfloat16": self.output_bfloat16, "word_dropout": self.word_dropout.rate,
                "layer_norm": self.layer_norm, "recurrent_bfloat16": self.recurrent_bfloat16,
                "variational_dropout": self.variational_dropout,
                "output_pieces": None if self.output_pieces is None else list(self.output_pieces)}
