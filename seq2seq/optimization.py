"""The training objective and its optimizer: the label-smoothed loss on real target tokens,
the learning-rate schedule, and Adam through TensorFlow's fused kernel."""

import keras
import tensorflow as tf

from seq2seq.dataset import decoder_inputs
from seq2seq.tokenizer import PAD_ID


def cross_entropy(labels, logits, label_smoothing=0.0):
    """Per-token cross-entropy against the target distribution (1 - ε) one-hot + ε uniform.

    With t = (1 - ε) one-hot(y) + ε/V and lse the log-sum-exp of a row's logits z, the loss
    ``-Σ t log softmax(z)`` is ``lse - (1 - ε) z_y - (ε/V) Σ z`` and its gradient
    ``softmax(z) - t``. Both come from one fused softmax (oneDNN's; with both cores training, as
    the update's parts do, faster than TensorFlow's fused softmax cross-entropy, which also needs
    the dense targets, though not always on one core beside an idle one): lse is
    ``max z - log max softmax(z)``, exact wherever the softmax is (its largest probability never
    underflows), and the gradient subtracts 1 - ε at the labels by a scatter.

    Args:
      labels: int32 [...].
      logits: float32 [..., vocab].
      label_smoothing: ε.
    Returns:
      float32 [...].
    """
    vocab = logits.shape[-1] or tf.shape(logits)[-1]
    flat_logits = tf.reshape(logits, [-1, vocab])
    loss = _smoothed_cross_entropy(tf.reshape(labels, [-1]), flat_logits, float(label_smoothing))
    return tf.reshape(loss, tf.shape(labels))


def _smoothed_cross_entropy(labels, logits, label_smoothing):
    """``cross_entropy`` of labels int32 [rows] and logits float [rows, vocab] -> [rows]."""

    @tf.custom_gradient
    def loss_of(logits):
        probabilities = tf.nn.softmax(logits)
        uniform = label_smoothing / tf.cast(tf.shape(logits)[-1], logits.dtype)
        log_sum_exp = tf.reduce_max(logits, -1) - tf.math.log(tf.reduce_max(probabilities, -1))
        labelled = tf.gather(logits, labels, batch_dims=1)
        loss = log_sum_exp - (1.0 - label_smoothing) * labelled - uniform * tf.reduce_sum(logits, -1)

        def gradient(upstream):
            at_labels = tf.stack([tf.range(tf.shape(labels)[0]), labels], 1)
            return tf.tensor_scatter_nd_sub((probabilities - uniform) * upstream[:, None], at_labels,
                                            (1.0 - label_smoothing) * upstream)

        return loss, gradient

    return loss_of(logits)


def sequence_loss(model, source, target, training=False, label_smoothing=0.0, rdrop=0.0):
    """The teacher-forced cross-entropy of a batch, summed over real target tokens. The output
    layer and the softmax run on those tokens only, not on padding (the output layer is the
    largest part of a training step).

    With ``rdrop`` α > 0 (R-Drop, Liang et al. 2021), the batch runs twice in one pass, its rows
    stacked on themselves, so the two copies draw different dropout masks; a token's loss is the
    mean of its two cross-entropies plus α/4 (KL(p₁‖p₂) + KL(p₂‖p₁)) of its two output
    distributions (the paper's CE₁ + CE₂ + α/2 (KL + KL), halved), and the token count is the
    batch's own.

    Args:
      model: a ``Seq2Seq``.
      source, target: int32 [batch, len] batches padded with PAD_ID.
      label_smoothing: ε (see ``cross_entropy``).
      rdrop: α, the weight of the two passes' symmetric KL divergence; 0: one pass.
    Returns:
      loss_sum: float32 scalar, the loss summed over real target tokens.
      tokens: float32 scalar, the number of real target tokens.
    """
    if rdrop:
        source, target = tf.concat([source, source], 0), tf.concat([target, target], 0)
    attentional = model.attentional((source, decoder_inputs(target)), training=training)
    real = tf.not_equal(target, PAD_ID)
    logits = model.output_logits(tf.boolean_mask(attentional, real), training=training)  # [tokens, output size]
    loss = cross_entropy(model.output_index(tf.boolean_mask(target, real)), logits, label_smoothing)
    if not rdrop:
        return tf.reduce_sum(loss), tf.cast(tf.size(loss), tf.float32)
    # The mask keeps the rows' order: the first copy's tokens, then the second's, the same ones.
    first, second = tf.split(tf.nn.log_softmax(logits), 2)
    divergence = tf.reduce_sum((tf.exp(first) - tf.exp(second)) * (first - second), -1)  # KL(p₁‖p₂) + KL(p₂‖p₁)
    tokens = tf.cast(tf.size(loss) // 2, tf.float32)
    return 0.5 * tf.reduce_sum(loss) + 0.25 * rdrop * tf.reduce_sum(divergence), tokens


class LearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate of ``training.lr_schedule`` at each step, after a linear warm-up of
    ``warmup_steps``: ``plateau`` is ``rate``, a variable that decay on plateau lowers (and that
    checkpoints keep); ``cosine`` follows a cosine from ``rate`` down to ``min_rate`` at
    ``total_steps`` (Keras's CosineDecay).
    """

    def __init__(self, schedule, rate, min_rate, warmup_steps, total_steps):
        self.schedule, self.min_rate = schedule, min_rate
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.rate = tf.Variable(rate, dtype=tf.float32, trainable=False, name="learning_rate")
        self.cosine = keras.optimizers.schedules.CosineDecay(
            1.0, max(1, total_steps - warmup_steps), alpha=min(1.0, min_rate / rate))

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        rate = tf.convert_to_tensor(self.rate)
        if self.warmup_steps:
            rate *= tf.minimum(1.0, (step + 1) / self.warmup_steps)
        if self.schedule == "cosine":
            rate *= self.cosine(tf.maximum(step - self.warmup_steps, 0.0))
        return rate

    def get_config(self):
        return {"schedule": self.schedule, "rate": float(self.rate.numpy()), "min_rate": self.min_rate,
                "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}


class FusedAdam(keras.optimizers.Adam):
    """Keras's Adam whose update of a variable is TensorFlow's fused kernel (``ResourceApplyAdam``).

    The same update, ``m ← β₁m + (1-β₁)g``, ``v ← β₂v + (1-β₂)g²``, ``w ← w - α m / (√v + ε)``
    with ``α = lr √(1-β₂ᵗ) / (1-β₁ᵗ)``, in one pass over the variable, its gradient and its two
    moments instead of Keras's six element-wise passes (docs/benchmarks.md, optimization 7).
    The moments are Keras's own variables, so checkpoints do not change. Sparse gradients and
    AMSGrad go through Keras's update.
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        # In a tf.distribute update, a mirrored variable's handle is that of this device's copy.
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable), m=_handle(self._momentums[index]), v=_handle(self._velocities[index]),
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2, epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype))


def _handle(variable):
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle


def make_optimizer(training_config, total_steps):
    """The learning-rate schedule and the optimizer of ``training_config``; with
    ``mixed_precision``, the optimizer is wrapped for loss scaling.

    Returns:
      (learning_rate, optimizer, loss_scale): ``loss_scale`` is the LossScaleOptimizer wrapping
      ``optimizer``, or None. Gradients are clipped by the caller.
    """
    t = training_config
    learning_rate = LearningRate(t.lr_schedule, t.learning_rate, t.min_learning_rate, t.warmup_steps, total_steps)
    optimizer = FusedAdam(learning_rate)
    loss_scale = keras.optimizers.LossScaleOptimizer(optimizer) if t.mixed_precision else None
    return learning_rate, optimizer, loss_scale
