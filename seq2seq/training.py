"""Training: the update step and the loop around it.

``Trainer(config, model_dir).train()`` trains until ``training.epochs`` epochs,
``training.max_steps`` steps, or ``training.patience`` validations without a better BLEU,
whichever comes first. Everything it needs to resume is in the model directory: re-running
the same command continues with the same step counter, optimizer state and best score.

The parts it is handed: ``distribute.Cluster`` (the strategy and this worker's role),
``optimization`` (the loss, the schedule and the optimizer), ``parts.PartsStep`` (on a CPU, the
update step with each batch computed in parts at once), ``checkpoints.TrainingState``
(the counters and checkpoints), ``evaluation`` (validation, early stopping, the divergence
guard) and ``reporting`` (log, progress line, validation history, TensorBoard).
"""

import concurrent.futures
import itertools
import math
import os
import shutil
import signal
import tempfile
import time

import keras
import tensorflow as tf

from seq2seq import model_dir as md
from seq2seq import segmentation, vocabulary
from seq2seq.checkpoints import TrainingState, average_weights, checkpoint_step
from seq2seq.corpus import check_data, corpus, ignored_keys
from seq2seq.dataset import estimate_batches, training_dataset
from seq2seq.distribute import Cluster
from seq2seq.errors import UserError
from seq2seq.evaluation import DivergenceGuard, EarlyStopping, Evaluator
from seq2seq.model import Seq2Seq
from seq2seq.optimization import make_optimizer, sequence_loss
from seq2seq.parts import PartsStep, choose_parts
from seq2seq.reporting import Progress, Reporter, log, setup_logging
from seq2seq.runtime import preloaded_allocator, share_cores
from seq2seq.tokenizer import Tokenizer


class Trainer:
    """Trains ``config`` into ``model_dir``, resuming what is already there. ``init_from``: a
    trained model directory whose model weights (those translate.py uses) a new run starts from,
    with its SentencePiece model(s) (fine-tuning; ``config`` has its model and tokenizer)."""

    def __init__(self, config, model_dir, init_from=None, tokenizer_training=None):
        self.config, self.model_dir, self.init_from = config, model_dir, init_from
        self.tokenizer_training = tokenizer_training  # an EarlyTraining of the SentencePiece model(s), or None
        self.stop_signal = None
        self.evaluator_warm_up = None  # a Future while the validation compiles in a thread
        self.train_loss = [0.0, 0]  # training loss sum and token count since the last validation

    @property
    def step(self):
        return self.state.step

    def _build(self, total_steps):
        """The model, optimizer, training state, evaluator and compiled step, in the strategy's scope."""
        cfg, tcfg = self.config, self.config.training
        # Mixed precision: float16 or bfloat16 compute, float32 variables; logits, softmax and loss
        # stay float32. Only float16 needs loss scaling (bfloat16 has float32's exponent range).
        keras.mixed_precision.set_global_policy(
            "mixed_float16" if tcfg.mixed_precision else "mixed_bfloat16" if tcfg.bfloat16 else "float32")
        with self.cluster.strategy.scope():
            self.model = Seq2Seq.from_config_section(cfg.model, self.tokenizer.source_vocab_size,
                                                     self.tokenizer.target_vocab_size, self.output_pieces)
            self.learning_rate, self.optimizer, self.loss_scale = make_optimizer(tcfg, total_steps)
            (self.loss_scale or self.optimizer).build(self.model.trainable_variables)
            write_dir = self.model_dir if self.cluster.is_chief else self.scratch
            self.state = TrainingState(self.model, self.optimizer, self.learning_rate.rate, self.loss_scale,
                                       write_dir, tcfg.keep_checkpoints, tcfg.average_checkpoints)
            self.stopping = EarlyStopping(tcfg, self.state.best_bleu, self.state.bad_validations, self.learning_rate)
            if self.parts > 1:
                self.train_step = PartsStep(self.model, self.optimizer, self.parts, tcfg.label_smoothing,
                                            tcfg.clip_norm, tcfg.rdrop)
            else:
                # One trace for every batch shape: the signature is the distributed batches' element spec.
                batch_spec = (tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.int32))
                empty = tf.data.Dataset.from_generator(lambda: iter(()), output_signature=batch_spec)
                self.train_step = tf.function(self._train_step, input_signature=list(
                    self.cluster.strategy.experimental_distribute_dataset(empty).element_spec), autograph=False)
            self.evaluator = Evaluator(self.model, self.tokenizer, cfg)

    # -- the step ------------------------------------------------------------------------------

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
            loss_sum, tokens = sequence_loss(self.model, source, target, True, self.config.training.label_smoothing,
                                             self.config.training.rdrop)
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
        loss_sum, tokens = self.cluster.strategy.run(self._replica_step, args=(source, target))
        loss_sum = self.cluster.strategy.reduce(tf.distribute.ReduceOp.SUM, loss_sum, axis=None)
        tokens = self.cluster.strategy.reduce(tf.distribute.ReduceOp.SUM, tokens, axis=None)
        return loss_sum / tf.maximum(tokens, 1.0), tokens

    # -- validation ----------------------------------------------------------------------------

    def validate(self):
        """Validation loss and BLEU; saves the best model; decays the learning rate after
        ``lr_decay_patience`` validations without progress."""
        self.guard.check_before_saving(self.step)
        started = time.time()
        loss, bleu, chrf = self._evaluate()
        step, improved = self.step, self.stopping.update(bleu)
        self.state.last_validated.assign(step)
        learning_rate = float(self.optimizer.learning_rate.numpy())
        train_loss = self.train_loss[0] / self.train_loss[1] if self.train_loss[1] else None
        self.train_loss = [0.0, 0]
        record = {"step": step, "epoch": int(self.state.epoch.numpy()) + 1,
                  "train_loss": None if train_loss is None else round(train_loss, 4), "loss": round(loss, 4),
                  "perplexity": round(math.exp(min(loss, 50)), 2), "bleu": round(bleu, 2), "chrf": round(chrf, 2),
                  "best_bleu": round(self.stopping.best, 2), "learning_rate": learning_rate,
                  "seconds": round(time.time() - started, 1)}
        self.reporter.record(record)
        self.reporter.scalars(step, {"valid/loss": loss, "valid/bleu": bleu, "valid/chrf": chrf,
                                     "train/learning_rate": learning_rate})
        log.info("validation at step %d: loss %.3f, perplexity %.2f, BLEU %.2f, chrF %.2f%s (%.0fs)", step, loss,
                 record["perplexity"], bleu, chrf,
                 " (new best)" if improved else f", best {record['best_bleu']:.2f}, "
                 f"{self.stopping.bad}/{self.config.training.patience} without improvement", record["seconds"])
        self.stopping.decay(improved)
        self.state.save_validated(improved)
        return improved

    def average_checkpoints(self):
        """Averages the weights of the last ``average_checkpoints`` validated models; if the
        average scores a better validation BLEU, it becomes the best model."""
        self.cluster.barrier()  # the chief's last copy is written
        saved = tf.train.get_checkpoint_state(os.path.join(self.model_dir, md.AVERAGING))
        paths = list(saved.all_model_checkpoint_paths) if saved else []
        step = self.step
        if len(paths) < 2 or int(self.state.averaged_at.numpy()) == step:
            return
        average_weights(self.model, paths)
        loss, bleu, chrf = self._evaluate()
        best_single = self.stopping.best
        improved = bleu > best_single
        steps = [checkpoint_step(p) for p in paths]
        log.info("average of the %d models of steps %s: validation loss %.3f, BLEU %.2f, chrF %.2f (best single "
                 "model %.2f)%s", len(paths), ", ".join(map(str, steps)), loss, bleu, chrf, best_single,
                 "; it becomes the best model" if improved else "; not kept")
        self.reporter.record({"step": step, "averaged_steps": steps, "loss": round(loss, 4), "bleu": round(bleu, 2),
                              "chrf": round(chrf, 2), "kept": improved})
        if improved:
            self.state.best_bleu.assign(bleu)
            self.state.best.save(checkpoint_number=step)
        self.state.restore(self.state.checkpoints.latest_checkpoint)  # back to the training state
        self.state.averaged_at.assign(step)
        if improved:
            self.state.best_bleu.assign(bleu)
        self.state.save()

    # -- the loop ------------------------------------------------------------------------------

    def _handle_signal(self, signum, frame):
        self.stop_signal = signum

    def train(self):
        """Trains; returns the best validation BLEU."""
        cfg, tcfg = self.config, self.config.training
        check_data(cfg.data)
        self.parts = choose_parts(tcfg)
        threads = share_cores(self.parts) if self.parts > 1 else None  # before TensorFlow's runtime starts
        self.cluster = Cluster(tcfg.distribution)  # first: MultiWorkerMirroredStrategy must precede other TF work
        if self.cluster.is_chief:
            md.prepare(self.model_dir, cfg)
            if self.init_from:
                md.copy_tokenizer(self.init_from, self.model_dir, cfg.tokenizer.joint)
                vocabulary.copy(self.init_from, self.model_dir)
            setup_logging(os.path.join(self.model_dir, md.TRAIN_LOG))
        else:
            self.scratch = tempfile.mkdtemp(prefix="seq2seq-worker-")
            setup_logging()
            log.info("worker %s: the chief writes %s", self.cluster.worker, self.model_dir)
        for line in ignored_keys(cfg.data):
            log.info("%s", line)
        keras.utils.set_random_seed(tcfg.seed)
        self.tokenizer = Tokenizer.for_training(self.model_dir, cfg, wait=not self.cluster.is_chief,
                                                started=self.tokenizer_training)
        self.corpus = corpus(cfg.data, "train")
        self.corpus_stats, batches_per_epoch = estimate_batches(self.corpus, self.tokenizer, tcfg, cfg.tokenizer)
        if self.corpus_stats.pairs == 0:
            raise UserError(f"{self.corpus.name}: no training pair is non-empty and within "
                            f"training.max_length={tcfg.max_length} tokens")
        self.output_pieces, outside = vocabulary.for_training(
            self.model_dir, cfg, self.tokenizer, self.corpus_stats.target_counts, self.init_from,
            write_file=self.cluster.is_chief)
        if self.output_pieces is not None:
            log.info("output vocabulary: %d of the %d target pieces (%s)%s", len(self.output_pieces),
                     self.tokenizer.target_vocab_size, vocabulary.FILE,
                     f"; {outside} target tokens of the corpus lie outside it and are learned as <unk>"
                     if outside else "")
        total_steps = tcfg.epochs * batches_per_epoch
        if tcfg.max_steps is not None:
            total_steps = min(total_steps, tcfg.max_steps)
        self._build(total_steps)
        self.guard = DivergenceGuard(self.model.output_size, tcfg.log_every, self.state.last_saved_step)
        # Every worker resumes from the chief's last checkpoint (a shared file system).
        resumed = tf.train.latest_checkpoint(os.path.join(self.model_dir, md.CHECKPOINTS))
        if resumed:
            self.state.restore(resumed)
            log.info("resumed from %s at step %d (epoch %d, best BLEU %.2f)", resumed, self.step,
                     int(self.state.epoch.numpy()) + 1, self.stopping.best)
        elif self.init_from:
            path = md.restore_weights(self.model, self.init_from)
            log.info("fine-tuning: the model starts from %s; optimizer, schedule, step and best score start "
                     "afresh", path)
        self.reporter = Reporter(self.model_dir, self.cluster.is_chief)
        log.info("training data: %s; %d batches an epoch", self.corpus_stats.describe(), batches_per_epoch)
        if cfg.tokenizer.sampling_alpha > 0:
            log.info("subword regularization: training segmentations sampled with alpha %g, nbest_size %d (%s)",
                     cfg.tokenizer.sampling_alpha, cfg.tokenizer.nbest_size,
                     "seeded by training.seed" if segmentation.seeded(self.tokenizer.source_model_path,
                                                                      cfg.tokenizer.nbest_size)
                     else "tensorflow-text's sampler, which takes no seed: two runs differ")
        log.info("model: %s, %s parameters; training to step %d", cfg.model.__dict__,
                 f"{self.model.count_params():,}", total_steps)
        log.info("memory allocator: %s", preloaded_allocator() or "the C library's malloc (where jemalloc is installed, "
                 "training runs on it: README, Install)")
        if self.parts > 1:
            log.info("each batch computed in %d parts at once (training.parallel_parts), %s intra-op thread(s) "
                     "each", self.parts, threads or "TensorFlow's")
        if self.cluster.replicas > 1 or tcfg.mixed_precision or tcfg.bfloat16:
            log.info("%d replicas (training.distribution=%s), each batch of %d tokens split between them; "
                     "compute in %s", self.cluster.replicas, tcfg.distribution, tcfg.batch_tokens,
                     keras.mixed_precision.global_policy().compute_dtype)

        previous = {s: signal.signal(s, self._handle_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._loop(total_steps)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.reporter.close()
            if not self.cluster.is_chief:
                shutil.rmtree(self.scratch, ignore_errors=True)
        return self.stopping.best

    def _loop(self, total_steps):
        progress = Progress(self.step, total_steps, self.config.training.log_every, self.reporter.progress)
        if not self.stopping.stopped():
            while self.step < total_steps and int(self.state.epoch.numpy()) < self.config.training.epochs:
                if self._train_epoch(progress, total_steps):
                    break
            progress.clear()
        if self.stop_signal is not None:
            return
        if int(self.state.last_validated.numpy()) != self.step and not self.stopping.stopped():
            self.validate()
        if self.state.averaging is not None:
            self.average_checkpoints()
        log.info("training done at step %d; best validation BLEU %.2f", self.step, self.stopping.best)

    def _first_batch_while_tracing(self, batches):
        """``batches`` (an iterator), its first batch fetched in a thread while this one traces the
        step: the shuffle buffer fills while Python traces. Then the validation is compiled in a
        thread while the first steps train (their ops run outside Python)."""
        with concurrent.futures.ThreadPoolExecutor(1, "first-batch") as pool:
            first = pool.submit(next, batches, None)
            self.train_step.trace()
            first = first.result()
        pool = concurrent.futures.ThreadPoolExecutor(1, "validation-warm-up")
        self.evaluator_warm_up = pool.submit(self.evaluator.warm_up)
        pool.shutdown(wait=False)
        return batches if first is None else itertools.chain([first], batches)

    def _evaluate(self):
        """``Evaluator.evaluate()``, once its warm-up (if one was started) is done."""
        if self.evaluator_warm_up is not None:
            self.evaluator_warm_up.result()
            self.evaluator_warm_up = None
        return self.evaluator.evaluate()

    def _train_epoch(self, progress, total_steps):
        """Trains to the end of the epoch or to ``total_steps``; returns True if training must stop
        now (early stopping, or a signal)."""
        cfg, tcfg = self.config, self.config.training
        epoch, done = int(self.state.epoch.numpy()), int(self.state.epoch_batches.numpy())
        dataset = training_dataset(self.corpus, self.tokenizer, tcfg, epoch, cfg.tokenizer)
        if done:  # a run stopped within this epoch goes on with the epoch's next batch
            dataset = dataset.skip(done)
            log.info("epoch %d goes on after the %d batches of it trained before", epoch + 1, done)
        batches = iter(self.cluster.strategy.experimental_distribute_dataset(dataset))
        if isinstance(self.train_step, PartsStep) and not self.train_step.traced:
            batches = self._first_batch_while_tracing(batches)
        for source, target in batches:
            loss, tokens = self.train_step(source, target)
            self.state.epoch_batches.assign_add(1)
            loss = float(loss)
            step = self.step
            self.guard.update(step, loss, int(tokens))
            progress.update(step, epoch, loss, int(tokens))
            self.train_loss[0] += loss * int(tokens)
            self.train_loss[1] += int(tokens)
            if step % tcfg.log_every == 0:
                self.reporter.scalars(step, {"train/loss": loss})
            if step % tcfg.validate_every == 0 and step != int(self.state.last_validated.numpy()):
                progress.clear()
                started = time.time()
                self.validate()
                progress.start_time += time.time() - started  # keep tokens/s about training
                if self.stopping.stopped():
                    return True
            if self.stop_signal is not None:
                progress.clear()
                self.guard.check_before_saving(step)
                path = self.state.save()
                log.info("stopped by signal %d at step %d; saved %s; re-run the same command to resume",
                         self.stop_signal, step, path)
                return True
            if step >= total_steps:
                return False
        self.state.epoch.assign_add(1)
        self.state.epoch_batches.assign(0)
        progress.clear()
        log.info("epoch %d done: %s%s", epoch + 1, self.corpus_stats.describe(),
                 " (tokens of the best segmentation)" if cfg.tokenizer.sampling_alpha > 0 else "")
        self.guard.check_before_saving(self.step)
        self.state.save()
        return False
