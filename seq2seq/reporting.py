"""What training reports: the log, the live progress line, the training and validation
histories (``training.jsonl`` and ``validation.jsonl``, one JSON object a line, the latter with
its learning-curve plot) and TensorBoard.

Programs read the figures from the histories (``model_dir.read_history``), not from the log's text.
"""

import json
import logging
import os
import sys
import time

import tensorflow as tf

from seq2seq import model_dir as md
from seq2seq.plots import write_learning_curves

log = logging.getLogger("seq2seq")


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
    """The live progress line (rewritten in place on a terminal) and periodic log lines.

    ``on_log(record)``, if given, receives the figures of each log line as a dict: ``step``,
    ``epoch``, ``loss`` (the mean token loss since the last log line) and
    ``target_tokens_per_sec``.
    """

    def __init__(self, step, total_steps, log_every, on_log=None):
        self.total_steps, self.log_every, self.on_log = total_steps, log_every, on_log
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
            if self.on_log is not None:
                self.on_log({"step": step, "epoch": epoch + 1, "loss": round(self.loss_sum / self.loss_tokens, 4),
                             "target_tokens_per_sec": round(rate, 1)})
            self.reset(step)
        elif self.live and now - self.last_draw > 0.5:
            sys.stderr.write("\r" + line + "\x1b[K")
            sys.stderr.flush()
            self.last_draw = now

    def clear(self):
        if self.live:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def append_json_line(path, record):
    """Appends one JSON record as a line to ``path``."""
    with open(path, "a+b") as f:
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")  # a line cut short by a killed run stays on its own line
        f.write((json.dumps(record) + "\n").encode("utf-8"))


class Reporter:
    """Writes the chief's reports into the model directory: the validation history, its plot,
    TensorBoard scalars. On other workers (``enabled`` False) it writes nothing."""

    def __init__(self, model_dir, enabled):
        self.model_dir, self.enabled = model_dir, enabled
        self.summaries = (tf.summary.create_file_writer(os.path.join(model_dir, md.TENSORBOARD)) if enabled
                          else tf.summary.create_noop_writer())

    def scalars(self, step, values):
        """values: dict of TensorBoard tag -> number."""
        with self.summaries.as_default(step=step):
            for tag, value in values.items():
                tf.summary.scalar(tag, value)

    def record(self, record):
        """A validation's figures: into the validation history, and its plot redrawn."""
        if self.enabled:
            append_json_line(os.path.join(self.model_dir, md.VALIDATION_HISTORY), record)
            write_learning_curves(self.model_dir)

    def progress(self, record):
        """A log line's figures (``Progress``'s ``on_log``): into the training history."""
        if self.enabled:
            append_json_line(os.path.join(self.model_dir, md.TRAINING_HISTORY), record)

    def close(self):
        self.summaries.close()
