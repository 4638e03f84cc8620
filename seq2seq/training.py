"""Training: loss, optimizer, checkpoints, validation, early stopping, logging, resuming.

``Trainer(config, model_dir).train()`` trains until ``training.epochs`` epochs,
``training.max_steps`` steps, or ``training.patience`` validations without a better BLEU,
whichever comes first. Everything it needs to resume is in the model directory: re-running
the same command continues with the same step counter, optimizer state and best score.
"""

import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time

import keras
import tensorflow as tf

from seq2seq import model_dir as md
from seq2seq.config import config_from_dict, read_yaml, save_config
from seq2seq.corpus import check_data, read_parallel
from seq2seq.dataset import (CorpusStats, decoder_inputs, estimate_batches, evaluation_batches,
                             training_dataset)
from seq2seq.errors import UserError
from seq2seq.model import Seq2Seq
from seq2seq.plots import write_learning_curves
from seq2seq.tokenizer import PAD_ID, Tokenizer
from seq2seq.translate import Translator, score

log = logging.getLogger("seq2seq")


def cross_entropy(labels, logits, label_smoothing=0.0):
    """Per-token cross-entropy against the target distribution (1 - ε) one-hot + ε uniform.

    TensorFlow's fused softmax cross-entropy (the loss and its gradient in one pass over the
    logits) on the smoothed one-hot targets: on this CPU faster than Keras's loss (which smooths
    the one-hot tensor in separate passes) and than the sparse op plus a smoothing term.

    Args:
      labels: int32 [...].
      logits: float32 [..., vocab].
      label_smoothing: ε.
    Returns:
      float32 [...].
    """
    vocab = tf.shape(logits)[-1]
    uniform = label_smoothing / tf.cast(vocab, logits.dtype)
    targets = tf.one_hot(labels, vocab, on_value=1.0 - label_smoothing + uniform, off_value=uniform,
                         dtype=logits.dtype)
    return tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)


def sequence_loss(model, source, target, training=False, label_smoothing=0.0):
    """The teacher-forced cross-entropy of a batch, summed over real target tokens. The output
    layer and the softmax run on those tokens only, not on padding (the output layer is the
    largest part of a training step).

    Args:
      model: a ``Seq2Seq``.
      source, target: int32 [batch, len] batches padded with PAD_ID.
      label_smoothing: ε (see ``cross_entropy``).
    Returns:
      loss_sum: float32 scalar, the loss summed over real target tokens.
      tokens: float32 scalar, the number of real target tokens.
    """
    attentional = model.attentional((source, decoder_inputs(target)), training=training)
    real = tf.not_equal(target, PAD_ID)
    logits = model.output_logits(tf.boolean_mask(attentional, real), training=training)  # [tokens, vocab]
    loss = cross_entropy(tf.boolean_mask(target, real), logits, label_smoothing)
    return tf.reduce_sum(loss), tf.cast(tf.size(loss), tf.float32)


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


def setup_logging(log_path=None):
    """Logs to stderr and to ``log_path`` if given (appending, so a resumed run keeps its history)."""
    log.setLevel(logging.INFO)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_path:
        handlers.append(logging.FileHandler(log_path, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        log.addHandler(handler)


def format_duration(seconds):
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
    """The live progress line (rewritten in place on a terminal) and periodic log lines."""

    def __init__(self, step, total_steps, log_every):
        self.total_steps, self.log_every = total_steps, log_every
        self.live = sys.stderr.isatty()
        self.reset(step)
        self.last_draw = 0.0

    def reset(self, step):
        self.start_time, self.start_step, self.tokens, self.loss_sum, self.loss_tokens = time.time(), step, 0, 0.0, 0

    def update(self, step, epoch, loss, tokens):
        self.tokens += tokens
        self.loss_sum += loss * tokens
        self.loss_tokens += tokens
        now = time.time()
        elapsed = max(now - self.start_time, 1e-6)
        rate = self.tokens / elapsed
        steps_per_sec = (step - self.start_step) / elapsed
        eta = (self.total_steps - step) / steps_per_sec if steps_per_sec > 0 else 0
        line = (f"step {step}/{self.total_steps} | epoch {epoch + 1} | loss {self.loss_sum / self.loss_tokens:.3f} "
                f"| {rate:,.0f} tok/s | ETA {format_duration(eta)}")
        if step % self.log_every == 0:
            self.clear()
            log.info(line)
            self.reset(step)
        elif self.live and now - self.last_draw > 0.5:
            sys.stderr.write("\r" + line + "\x1b[K")
            sys.stderr.flush()
            self.last_draw = now

    def clear(self):
        if self.live:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


class DivergenceGuard:
    """Stops a training whose loss is not finite, or stays far above a uniform guess's.

    A model that gives every one of the V target subwords the same probability scores ln V, so
    a mean training loss above ``2 ln V`` for ``intervals`` log intervals in a row (or at a
    moment a checkpoint would be written) means the weights have blown up: training stops with
    the step, the loss and a remedy, before anything diverged is saved.
    """

    def __init__(self, target_vocab_size, log_every, last_checkpoint, intervals=3):
        """``last_checkpoint()``: the step of the last checkpoint saved, or None (for the message)."""
        self.vocab_size, self.log_every, self.intervals = target_vocab_size, log_every, intervals
        self.last_checkpoint = last_checkpoint
        self.ceiling = 2 * math.log(target_vocab_size)
        self.loss_sum, self.tokens, self.last_mean, self.high, self.high_since = 0.0, 0, None, 0, None

    def update(self, step, loss, tokens):
        """Takes one step's mean token loss and token count; raises UserError if training diverged."""
        if not math.isfinite(loss):
            self._fail(step, f"the loss is {loss}")
        self.loss_sum += loss * tokens
        self.tokens += tokens
        if step % self.log_every == 0:
            self.last_mean = self.loss_sum / max(self.tokens, 1)
            self.loss_sum, self.tokens = 0.0, 0
            if self.last_mean > self.ceiling:
                self.high += 1
                self.high_since = self.high_since if self.high_since is not None else step - self.log_every
            else:
                self.high, self.high_since = 0, None
            if self.high >= self.intervals:
                self._fail(step, self._above(self.last_mean, f"from step {self.high_since} to {step}"))

    def check_before_saving(self, step):
        """Raises UserError if the loss since the last log line (or of the last interval) is too high."""
        mean = self.loss_sum / self.tokens if self.tokens else self.last_mean
        if mean is not None and mean > self.ceiling:
            self._fail(step, self._above(mean, "when a checkpoint was due"))

    def _above(self, mean, when):
        return (f"the mean loss is {mean:.4g}, above 2 ln V = {self.ceiling:.2f} (twice a uniform guess over "
                f"the {self.vocab_size} target subwords) {when}")

    def _fail(self, step, what):
        last = self.last_checkpoint()
        kept = f"the last checkpoint (step {last})" if last is not None else "the start (no checkpoint was saved)"
        raise UserError(f"training diverged at step {step}: {what}; lower training.learning_rate or "
                        f"training.clip_norm and re-run to resume from {kept}")


class Trainer:
    """Trains ``config`` into ``model_dir``, resuming what is already there."""

    def __init__(self, config, model_dir):
        self.config, self.model_dir = config, model_dir
        self.stop_signal = None
        self.is_chief, self.worker = True, None  # set by _make_strategy for multi-worker training
        self._all_reduce_one = None  # the barrier's tf.function, traced on first use
        self.train_loss = [0.0, 0]  # training loss sum and token count since the last validation

    # -- set-up --------------------------------------------------------------------------------

    def _prepare_model_dir(self):
        """Creates the model directory or checks that it holds a compatible run; saves the config."""
        os.makedirs(self.model_dir, exist_ok=True)
        config_path = os.path.join(self.model_dir, md.CONFIG)
        if os.path.isfile(config_path):
            md.check_format(self.model_dir)
            saved = config_from_dict(read_yaml(config_path))
            for section in ("tokenizer", "model"):
                old, new = getattr(saved, section).__dict__, getattr(self.config, section).__dict__
                for key in old:
                    if old[key] != new[key]:
                        raise UserError(
                            f"{self.model_dir}: was trained with {section}.{key}={old[key]!r}, not {new[key]!r}; "
                            "use another --model-dir to train a different model")
        save_config(self.config, config_path)
        md.write_format(self.model_dir)

    def _load_tokenizer(self):
        joint = self.config.tokenizer.joint
        source_path, target_path = Tokenizer.model_paths(self.model_dir, joint)
        if not self.is_chief:  # the chief trains it; files appear whole (written, then renamed)
            log.info("waiting for the chief's SentencePiece model in %s", self.model_dir)
            while not (os.path.isfile(source_path) and os.path.isfile(target_path)):
                time.sleep(1.0)
        if os.path.isfile(source_path) and os.path.isfile(target_path):
            return Tokenizer(source_path, target_path)
        log.info("training SentencePiece (vocab_size %d, %s) on the training data",
                 self.config.tokenizer.vocab_size, "joint" if joint else "one model per side")
        return Tokenizer.train(self.model_dir, self.config.data, self.config.tokenizer, self.config.training.seed)

    def _make_strategy(self):
        """The tf.distribute strategy of ``training.distribution``: the default (one device);
        MirroredStrategy over every local GPU (every logical CPU device when there is no GPU);
        or MultiWorkerMirroredStrategy over the cluster of ``TF_CONFIG``. Sets ``is_chief``."""
        distribution = self.config.training.distribution
        if distribution == "mirrored":
            devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
            return tf.distribute.MirroredStrategy([device.name for device in devices])
        if distribution == "multi_worker":
            if not os.environ.get("TF_CONFIG"):
                raise UserError("training.distribution=multi_worker needs the cluster in the TF_CONFIG environment "
                                "variable (see the README)")
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
            resolver = strategy.cluster_resolver
            has_chief = "chief" in resolver.cluster_spec().as_dict()
            self.is_chief = resolver.task_type == "chief" or (
                not has_chief and resolver.task_type == "worker" and resolver.task_id == 0)
            self.worker = f"{resolver.task_type}:{resolver.task_id}"
            return strategy
        return tf.distribute.get_strategy()

    def _barrier(self):
        """Waits until every worker gets here: a collective all-reduce of one number, in a graph
        (MultiWorkerMirroredStrategy runs collectives from a tf.function only)."""
        if self.strategy.num_replicas_in_sync == 1:
            return
        if self._all_reduce_one is None:
            self._all_reduce_one = tf.function(lambda: self.strategy.run(
                lambda: tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM,
                                                                       tf.constant(1.0))))
        self._all_reduce_one()

    def _build(self, total_steps):
        cfg = self.config
        # Mixed precision: float16 or bfloat16 compute, float32 variables; logits, softmax and loss
        # stay float32. Only float16 needs loss scaling (bfloat16 has float32's exponent range).
        keras.mixed_precision.set_global_policy(
            "mixed_float16" if cfg.training.mixed_precision else "mixed_bfloat16" if cfg.training.bfloat16 else
            "float32")
        with self.strategy.scope():
            self._build_in_scope(total_steps)

    def _build_in_scope(self, total_steps):
        cfg, tcfg = self.config, self.config.training
        self.model = Seq2Seq.from_config_section(cfg.model, self.tokenizer.source_vocab_size,
                                                 self.tokenizer.target_vocab_size)
        self.learning_rate = LearningRate(tcfg.lr_schedule, tcfg.learning_rate, tcfg.min_learning_rate,
                                          tcfg.warmup_steps, total_steps)
        # Gradients are clipped in the train step, after they are summed over replicas.
        self.optimizer = FusedAdam(self.learning_rate)
        self.optimizer.build(self.model.trainable_variables)
        self.loss_scale = None
        if cfg.training.mixed_precision:
            self.loss_scale = keras.optimizers.LossScaleOptimizer(self.optimizer)
            self.loss_scale.build(self.model.trainable_variables)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.best_bleu = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_bleu")
        self.bad_validations = tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_validations")
        self.last_validated = tf.Variable(-1, dtype=tf.int64, trainable=False, name="last_validated")
        self.averaged_at = tf.Variable(-1, dtype=tf.int64, trainable=False, name="averaged_at")
        state = dict(model=self.model, optimizer=self.optimizer, learning_rate=self.learning_rate.rate,
                     epoch=self.epoch, best_bleu=self.best_bleu, bad_validations=self.bad_validations,
                     last_validated=self.last_validated, averaged_at=self.averaged_at)
        if self.loss_scale is not None:
            state["loss_scale"] = self.loss_scale
        checkpoint = tf.train.Checkpoint(**state)
        # Every worker saves (as tf.distribute requires); the chief into the model directory, the
        # others into a scratch directory that is thrown away.
        write_dir = self.model_dir if self.is_chief else self.scratch
        self.checkpoints = tf.train.CheckpointManager(
            checkpoint, os.path.join(write_dir, md.CHECKPOINTS), max_to_keep=cfg.training.keep_checkpoints,
            step_counter=self.optimizer.iterations)
        best = tf.train.Checkpoint(model=self.model, best_bleu=self.best_bleu)
        self.best_checkpoints = tf.train.CheckpointManager(best, os.path.join(write_dir, md.BEST),
                                                           max_to_keep=1, step_counter=self.optimizer.iterations)
        self.averaging = None
        if cfg.training.average_checkpoints > 1:
            self.averaging = tf.train.CheckpointManager(
                tf.train.Checkpoint(model=self.model), os.path.join(write_dir, md.AVERAGING),
                max_to_keep=cfg.training.average_checkpoints, step_counter=self.optimizer.iterations)
        self.loss_smoothing = cfg.training.label_smoothing
        # One trace for every batch shape: the signature is the distributed batches' element spec.
        batch_spec = (tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.int32))
        empty = tf.data.Dataset.from_generator(lambda: iter(()), output_signature=batch_spec)
        self.train_step = tf.function(self._train_step, input_signature=list(
            self.strategy.experimental_distribute_dataset(empty).element_spec))
        self.eval_step = tf.function(self._eval_step, input_signature=[
            tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.int32)])
        self.translator = Translator(self.model, self.tokenizer, cfg.translate, cfg.training.validation_beam_size)

    def _last_checkpoint_step(self):
        path = self.checkpoints.latest_checkpoint
        return int(path.rsplit("-", 1)[1]) if path else None

    @property
    def step(self):
        return int(self.optimizer.iterations.numpy())

    # -- steps ---------------------------------------------------------------------------------

    def _replica_step(self, source, target):
        """One replica's share of an update. source, target: int32 [batch, len], this replica's
        part of the global batch -> (summed loss, target token count) of that part.

        The loss is normalized by the token count of the whole global batch, so that the
        gradients summed over replicas are those of the global batch's mean token loss, whatever
        the number of replicas. They are clipped by their global norm after that sum (and after
        undoing the loss scale, with mixed precision).
        """
        context = tf.distribute.get_replica_context()
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            loss_sum, tokens = sequence_loss(self.model, source, target, True, self.loss_smoothing)
            global_tokens = context.all_reduce(tf.distribute.ReduceOp.SUM, tokens)
            loss = loss_sum / tf.maximum(global_tokens, 1.0)
            if self.loss_scale is not None:
                loss = self.loss_scale.scale_loss(loss)
        gradients = [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]
        scale = tf.cast(self.loss_scale.dynamic_scale, tf.float32) if self.loss_scale is not None else 1.0
        gradients = context.all_reduce(tf.distribute.ReduceOp.SUM, [g / scale for g in gradients])
        gradients, _ = tf.clip_by_global_norm(gradients, self.config.training.clip_norm)
        # The optimizer sums over replicas again (and undoes the loss scale): hand it its share.
        share = scale / context.num_replicas_in_sync
        (self.loss_scale or self.optimizer).apply_gradients(zip([g * share for g in gradients], variables))
        return loss_sum, tokens

    def _train_step(self, source, target):
        """One update on a global batch (per-replica values under a strategy) -> (mean token
        loss, target token count) of the global batch."""
        loss_sum, tokens = self.strategy.run(self._replica_step, args=(source, target))
        loss_sum = self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss_sum, axis=None)
        tokens = self.strategy.reduce(tf.distribute.ReduceOp.SUM, tokens, axis=None)
        return loss_sum / tf.maximum(tokens, 1.0), tokens

    def _eval_step(self, source, target):
        return sequence_loss(self.model, source, target)

    # -- validation ----------------------------------------------------------------------------

    def _evaluate(self):
        """Validation loss (teacher forcing), BLEU and chrF of the current weights."""
        loss_sum = tokens = 0.0
        for source, target in self.valid_batches:
            batch_loss, batch_tokens = self.eval_step(source, target)
            loss_sum += float(batch_loss)
            tokens += float(batch_tokens)
        hypotheses = self.translator.translate(self.valid_sources)
        _, bleu, chrf = score(hypotheses, self.valid_references)
        return loss_sum / max(tokens, 1.0), bleu.score, chrf.score

    def _record(self, record):
        if not self.is_chief:
            return
        path = os.path.join(self.model_dir, md.VALIDATION_HISTORY)
        with open(path, "a+b") as f:
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")  # a line cut short by a killed run stays on its own line
            f.write((json.dumps(record) + "\n").encode("utf-8"))
        write_learning_curves(self.model_dir)

    def validate(self):
        """Validation loss and BLEU (``validation_beam_size``, greedy by default); saves the best
        model; decays the learning rate after ``lr_decay_patience`` validations without progress."""
        tcfg = self.config.training
        self.guard.check_before_saving(self.step)
        started = time.time()
        loss, bleu, chrf = self._evaluate()
        step = self.step
        improved = bleu > float(self.best_bleu.numpy())
        if improved:
            self.best_bleu.assign(bleu)
            self.bad_validations.assign(0)
            self.best_checkpoints.save(checkpoint_number=step)
        else:
            self.bad_validations.assign_add(1)
        self.last_validated.assign(step)
        learning_rate = float(self.optimizer.learning_rate.numpy())
        train_loss = self.train_loss[0] / self.train_loss[1] if self.train_loss[1] else None
        self.train_loss = [0.0, 0]
        record = {"step": step, "epoch": int(self.epoch.numpy()) + 1,
                  "train_loss": None if train_loss is None else round(train_loss, 4), "loss": round(loss, 4),
                  "perplexity": round(math.exp(min(loss, 50)), 2), "bleu": round(bleu, 2), "chrf": round(chrf, 2),
                  "best_bleu": round(float(self.best_bleu.numpy()), 2), "learning_rate": learning_rate,
                  "seconds": round(time.time() - started, 1)}
        self._record(record)
        with self.summaries.as_default(step=step):
            tf.summary.scalar("valid/loss", loss)
            tf.summary.scalar("valid/bleu", bleu)
            tf.summary.scalar("valid/chrf", chrf)
            tf.summary.scalar("train/learning_rate", learning_rate)
        bad = int(self.bad_validations.numpy())
        log.info("validation at step %d: loss %.3f, perplexity %.2f, BLEU %.2f, chrF %.2f%s (%.0fs)", step, loss,
                 record["perplexity"], bleu, chrf,
                 " (new best)" if improved else f", best {record['best_bleu']:.2f}, "
                 f"{bad}/{tcfg.patience} without improvement", record["seconds"])
        if (tcfg.lr_schedule == "plateau" and not improved and bad % tcfg.lr_decay_patience == 0
                and tcfg.lr_decay_factor < 1):
            rate = float(self.learning_rate.rate.numpy())
            decayed = max(rate * tcfg.lr_decay_factor, tcfg.min_learning_rate)
            if decayed < rate:
                self.learning_rate.rate.assign(decayed)
                log.info("learning rate %.3g -> %.3g after %d validations without improvement", rate, decayed,
                         tcfg.lr_decay_patience)
        if self.averaging is not None:
            self.averaging.save(checkpoint_number=step)
        self.checkpoints.save(checkpoint_number=step)
        return improved

    def average_checkpoints(self):
        """Averages the weights of the last ``average_checkpoints`` validated models; if the
        average scores a better validation BLEU, it becomes the best model."""
        self._barrier()  # the chief's last copy is written
        state = tf.train.get_checkpoint_state(os.path.join(self.model_dir, md.AVERAGING))
        paths = list(state.all_model_checkpoint_paths) if state else []
        step = self.step
        if len(paths) < 2 or int(self.averaged_at.numpy()) == step:
            return
        checkpoint = tf.train.Checkpoint(model=self.model)
        total = None
        for path in paths:
            checkpoint.restore(path).expect_partial()
            weights = [w.numpy() for w in self.model.weights]
            total = weights if total is None else [t + w for t, w in zip(total, weights)]
        self.model.set_weights([t / len(paths) for t in total])
        loss, bleu, chrf = self._evaluate()
        improved = bleu > float(self.best_bleu.numpy())
        steps = [int(p.rsplit("-", 1)[1]) for p in paths]
        log.info("average of the %d models of steps %s: validation loss %.3f, BLEU %.2f, chrF %.2f (best single "
                 "model %.2f)%s", len(paths), ", ".join(map(str, steps)), loss, bleu, chrf,
                 float(self.best_bleu.numpy()), "; it becomes the best model" if improved else "; not kept")
        self._record({"step": step, "averaged_steps": steps, "loss": round(loss, 4), "bleu": round(bleu, 2),
                      "chrf": round(chrf, 2), "kept": improved})
        if improved:
            self.best_bleu.assign(bleu)
            self.best_checkpoints.save(checkpoint_number=step)
        self.checkpoints.checkpoint.restore(self.checkpoints.latest_checkpoint)  # back to the training state
        self.averaged_at.assign(step)
        if improved:
            self.best_bleu.assign(bleu)
        self.checkpoints.save(checkpoint_number=step)

    # -- the loop ------------------------------------------------------------------------------

    def _handle_signal(self, signum, frame):
        self.stop_signal = signum

    def train(self):
        cfg, tcfg = self.config, self.config.training
        data = cfg.data
        check_data(data)
        self.strategy = self._make_strategy()  # first: MultiWorkerMirroredStrategy must precede other TF work
        if self.is_chief:
            self._prepare_model_dir()
            setup_logging(os.path.join(self.model_dir, md.TRAIN_LOG))
        else:
            self.scratch = tempfile.mkdtemp(prefix="seq2seq-worker-")
            setup_logging()
            log.info("worker %s: the chief writes %s", self.worker, self.model_dir)
        keras.utils.set_random_seed(tcfg.seed)
        self.tokenizer = self._load_tokenizer()
        stats, batches_per_epoch = estimate_batches(data.train_source, data.train_target, self.tokenizer, tcfg)
        if stats.pairs == 0:
            raise UserError(f"{data.train_source}: no training pair is non-empty and within "
                            f"training.max_length={tcfg.max_length} tokens")
        total_steps = tcfg.epochs * batches_per_epoch
        if tcfg.max_steps is not None:
            total_steps = min(total_steps, tcfg.max_steps)
        self._build(total_steps)
        self.guard = DivergenceGuard(self.tokenizer.target_vocab_size, tcfg.log_every, self._last_checkpoint_step)
        # Every worker resumes from the chief's last checkpoint (a shared file system).
        resumed = tf.train.latest_checkpoint(os.path.join(self.model_dir, md.CHECKPOINTS))
        if resumed:
            self.checkpoints.checkpoint.restore(resumed)
            log.info("resumed from %s at step %d (epoch %d, best BLEU %.2f)", resumed, self.step,
                     int(self.epoch.numpy()) + 1, float(self.best_bleu.numpy()))
        self.summaries = (tf.summary.create_file_writer(os.path.join(self.model_dir, md.TENSORBOARD))
                          if self.is_chief else tf.summary.create_noop_writer())
        self.valid_batches = evaluation_batches(data.valid_source, data.valid_target, self.tokenizer, tcfg)
        valid_pairs = [(s, t) for _, s, t in read_parallel(data.valid_source, data.valid_target)]
        self.valid_sources = [s for s, _ in valid_pairs]
        self.valid_references = [t for _, t in valid_pairs]

        log.info("training data: %s; %d batches an epoch", stats.describe(), batches_per_epoch)
        log.info("model: %s, %s parameters; training to step %d", cfg.model.__dict__,
                 f"{self.model.count_params():,}", total_steps)
        if self.strategy.num_replicas_in_sync > 1 or tcfg.mixed_precision or tcfg.bfloat16:
            log.info("%d replicas (training.distribution=%s), each batch of %d tokens split between them; "
                     "compute in %s", self.strategy.num_replicas_in_sync, tcfg.distribution, tcfg.batch_tokens,
                     keras.mixed_precision.global_policy().compute_dtype)

        previous = {s: signal.signal(s, self._handle_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._loop(total_steps)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.summaries.close()
            if not self.is_chief:
                shutil.rmtree(self.scratch, ignore_errors=True)
        return float(self.best_bleu.numpy())

    def _early_stopped(self):
        if int(self.bad_validations.numpy()) < self.config.training.patience:
            return False
        log.info("early stopping: %d validations without a better BLEU (best %.2f)",
                 self.config.training.patience, float(self.best_bleu.numpy()))
        return True

    def _loop(self, total_steps):
        progress = Progress(self.step, total_steps, self.config.training.log_every)
        if not self._early_stopped():
            while self.step < total_steps and int(self.epoch.numpy()) < self.config.training.epochs:
                if self._train_epoch(progress, total_steps):
                    break
            progress.clear()
        if self.stop_signal is not None:
            return
        if int(self.last_validated.numpy()) != self.step and not self._early_stopped():
            self.validate()
        if self.averaging is not None:
            self.average_checkpoints()
        log.info("training done at step %d; best validation BLEU %.2f", self.step, float(self.best_bleu.numpy()))

    def _train_epoch(self, progress, total_steps):
        """Trains to the end of the epoch or to ``total_steps``; returns True if training must stop
        now (early stopping, or a signal)."""
        cfg, tcfg = self.config, self.config.training
        epoch = int(self.epoch.numpy())
        stats = CorpusStats()
        batches = self.strategy.experimental_distribute_dataset(training_dataset(
            cfg.data.train_source, cfg.data.train_target, self.tokenizer, tcfg, epoch, stats))
        for source, target in batches:
            loss, tokens = self.train_step(source, target)
            loss = float(loss)
            step = self.step
            self.guard.update(step, loss, int(tokens))
            progress.update(step, epoch, loss, int(tokens))
            self.train_loss[0] += loss * int(tokens)
            self.train_loss[1] += int(tokens)
            if step % tcfg.log_every == 0:
                with self.summaries.as_default(step=step):
                    tf.summary.scalar("train/loss", loss)
            if step % tcfg.validate_every == 0 and step != int(self.last_validated.numpy()):
                progress.clear()
                started = time.time()
                self.validate()
                progress.start_time += time.time() - started  # keep tokens/s about training
                if self._early_stopped():
                    return True
            if self.stop_signal is not None:
                progress.clear()
                self.guard.check_before_saving(step)
                path = self.checkpoints.save(checkpoint_number=step)
                log.info("stopped by signal %d at step %d; saved %s; re-run the same command to resume",
                         self.stop_signal, step, path)
                return True
            if step >= total_steps:
                return False
        self.epoch.assign_add(1)
        progress.clear()
        log.info("epoch %d done: %s", epoch + 1, stats.describe())
        self.guard.check_before_saving(self.step)
        self.checkpoints.save(checkpoint_number=self.step)
        return False
