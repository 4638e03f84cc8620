"""Validation and the decisions made from it: the validation loss, BLEU and chrF of the current
weights; the best score, patience and learning-rate decay; and the guard that stops a diverged
training."""

import concurrent.futures
import functools
import math

import tensorflow as tf

from seq2seq.corpus import corpus
from seq2seq.dataset import evaluation_batches
from seq2seq.errors import UserError
from seq2seq.optimization import sequence_loss
from seq2seq.reporting import log
from seq2seq.translate import Translator, score


class Evaluator:
    """Scores a model on the validation set of ``config.data``: the teacher-forced loss and the
    BLEU and chrF of its translations (``training.validation_beam_size``, greedy by default).

    The loss's batches are computed as the translator searches: ``Translator.parallel_batches``
    at once, each in its own thread (a training's cores are shared between threads that way:
    ``runtime.share_cores``)."""

    def __init__(self, model, tokenizer, config):
        self.model, self.tokenizer, self.training = model, tokenizer, config.training
        self.valid = corpus(config.data, "valid")
        self.translator = Translator(model, tokenizer, config.translate, self.training.validation_beam_size)
        self.loss_step = tf.function(lambda source, target: sequence_loss(model, source, target), input_signature=[
            tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.int32)], autograph=False)

    @functools.cached_property
    def batches(self):
        """The loss's batches (``evaluation_batches``), made when first needed: in the thread of
        ``warm_up`` where the trainer starts one."""
        return evaluation_batches(self.valid, self.tokenizer, self.training)

    @functools.cached_property
    def pairs(self):
        """(sources, references): the validation set's lines, read when first needed."""
        pairs = [(source, target) for _, source, target in self.valid.pairs()]
        return [source for source, _ in pairs], [target for _, target in pairs]

    def warm_up(self):
        """Reads the validation set and compiles the loss (on its first pair) and the search, so
        that the first validation finds them ready."""
        _ = self.pairs  # read here, not at the first validation
        if self.batches:
            source, target = self.batches[0]
            self.loss_step(source[:1], target[:1])
        self.translator.warm_up()

    def evaluate(self):
        """Returns (loss per target token, BLEU, chrF) of the model's current weights."""
        loss_sum = tokens = 0.0
        with concurrent.futures.ThreadPoolExecutor(self.translator.parallel_batches, "validation-loss") as pool:
            for batch_loss, batch_tokens in pool.map(lambda batch: self.loss_step(*batch), self.batches):
                loss_sum += float(batch_loss)
                tokens += float(batch_tokens)
        sources, references = self.pairs
        hypotheses = self.translator.translate(sources)
        _, bleu, chrf = score(hypotheses, references)
        return loss_sum / max(tokens, 1.0), bleu.score, chrf.score


class EarlyStopping:
    """The best validation BLEU, the validations without a better one since, and what follows:
    stopping after ``training.patience`` of them, and with the ``plateau`` schedule the learning
    rate multiplied by ``lr_decay_factor`` after every ``lr_decay_patience`` of them.

    ``best_bleu`` and ``bad_validations`` are variables of the training state, so a resumed run
    continues with them.
    """

    def __init__(self, training_config, best_bleu, bad_validations, learning_rate):
        self.config, self.learning_rate = training_config, learning_rate
        self.best_bleu, self.bad_validations = best_bleu, bad_validations

    @property
    def best(self):
        return float(self.best_bleu.numpy())

    @property
    def bad(self):
        return int(self.bad_validations.numpy())

    def update(self, bleu):
        """Takes a validation's BLEU; returns whether it is the best so far."""
        improved = bleu > self.best
        if improved:
            self.best_bleu.assign(bleu)
            self.bad_validations.assign(0)
        else:
            self.bad_validations.assign_add(1)
        return improved

    def decay(self, improved):
        """After a validation (``improved``: its ``update``), decays the plateau schedule's rate
        after every ``lr_decay_patience`` validations without progress."""
        t = self.config
        if (t.lr_schedule == "plateau" and not improved and self.bad % t.lr_decay_patience == 0
                and t.lr_decay_factor < 1):
            rate = float(self.learning_rate.rate.numpy())
            decayed = max(rate * t.lr_decay_factor, t.min_learning_rate)
            if decayed < rate:
                self.learning_rate.rate.assign(decayed)
                log.info("learning rate %.3g -> %.3g after %d validations without improvement", rate, decayed,
                         t.lr_decay_patience)

    def stopped(self):
        """Whether ``patience`` validations in a row brought no better BLEU (logged when so)."""
        if self.bad < self.config.patience:
            return False
        log.info("early stopping: %d validations without a better BLEU (best %.2f)", self.config.patience, self.best)
        return True


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
