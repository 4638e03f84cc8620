"""The model side of ``seq2seq serve``: the model as served (its backend) and the dynamic
batching queue in front of it, as TensorFlow Serving has them.

Backends. ``ModelDirBackend`` serves a trained model directory's ``serving_default`` through
``translate.Translator`` (the search of ``translate.py``, with n-best lists and attention);
``SavedModelBackend`` serves every signature of an exported SavedModel. Both describe their
signatures as TensorFlow Serving's metadata does and run a batch with ``run(key, columns)``.

Batching. The sentences of requests that arrive close together go through one search call.
Each request (a ``Job``) puts its sentences on one queue. A worker thread takes the oldest
waiting sentence and the others that share its ``key`` (the signature and the request's options,
which one search call must share), up to ``max_batch_size`` of them, waiting for more at most
``timeout`` seconds after that oldest sentence arrived; it sorts them by length (less padding),
runs them as one batch and hands every request its own results, in its own order, through a
``concurrent.futures.Future``. A request larger than a batch is spread over several batches.
The workers run off the event loop: the server stays responsive while a batch is searched. With
two workers (the server's), a second batch is searched while the first is: one search leaves
cores idle (docs/benchmarks.md).
``max_queue`` bounds the sentences accepted and not yet answered (waiting or being searched); a
request that would go over it is refused with ``QueueFull`` (the server's 503).
"""

import collections
import concurrent.futures
import os
import threading
import time

DEFAULT_SIGNATURE = "serving_default"


class QueueFull(Exception):
    """The queue cannot take a request's sentences now (or the server is stopping)."""


class Job:
    """One request: ``columns`` maps each input name to its list of ``size`` values; the results
    (one per sentence, in order) arrive in ``future``."""

    def __init__(self, key, columns, size):
        self.key, self.columns, self.size = key, columns, size
        self.results = [None] * size
        self.left = size
        self.future = concurrent.futures.Future()


Item = collections.namedtuple("Item", "job index arrived")


class Batcher:
    """Runs ``run(key, columns) -> list of results`` (``columns``: input name -> list of values, one
    per sentence of the batch; one result per sentence, in that order) on batches of the sentences
    submitted with the same key, in ``workers`` threads (each runs one batch at a time).

    ``length(key, columns, index)`` orders a batch's sentences (by their length).
    """

    def __init__(self, run, length, max_batch_size, timeout, max_queue, workers=1):
        self.run, self.length = run, length
        self.max_batch_size, self.timeout, self.max_queue = max_batch_size, timeout, max_queue
        self.queue = collections.deque()  # Items waiting, oldest first
        self.pending = 0  # sentences accepted and not yet answered
        self.batches = self.sentences = 0  # batches run and their sentences, for /healthz
        self.closed = self.draining = False
        self.condition = threading.Condition()
        self.workers = [threading.Thread(target=self._work, name=f"batcher-{i}", daemon=True) for i in range(workers)]

    def start(self):
        for worker in self.workers:
            worker.start()

    def drain(self):
        """From now on, runs what is queued without waiting for fuller batches (the server is
        stopping: the requests in flight are answered as soon as they can be)."""
        with self.condition:  # (a reentrant lock: safe from a signal handler of the main thread)
            self.draining = True
            self.condition.notify_all()

    def close(self):
        """Stops taking requests, answers those queued, then stops the workers."""
        with self.condition:
            self.closed = True
            self.condition.notify_all()
        for worker in self.workers:
            if worker.is_alive():
                worker.join()

    def submit(self, key, columns, size):
        """Queues a request of ``size`` sentences; returns the Future of its list of results.
        Raises QueueFull when the queue cannot take them all."""
        job = Job(key, columns, size)
        if size == 0:
            job.future.set_result([])
            return job.future
        with self.condition:
            if self.closed:
                raise QueueFull("the server is shutting down")
            if self.pending + size > self.max_queue:
                raise QueueFull(f"the queue is full ({self.pending} sentences waiting or being translated, "
                                f"at most {self.max_queue}); try again later")
            self.pending += size
            now = time.monotonic()
            self.queue.extend(Item(job, i, now) for i in range(size))
            self.condition.notify()
        return job.future

    def _next_batch(self):
        """The next batch (a list of Items of one key), or None once closed and empty."""
        with self.condition:
            while True:
                if not self.queue:
                    if self.closed:
                        return None
                    self.condition.wait()
                    continue
                key = self.queue[0].job.key
                same = [item for item in self.queue if item.job.key == key][: self.max_batch_size]
                wait = self.queue[0].arrived + self.timeout - time.monotonic()
                if len(same) == self.max_batch_size or wait <= 0 or self.closed or self.draining:
                    taken = {id(item) for item in same}
                    self.queue = collections.deque(item for item in self.queue if id(item) not in taken)
                    return same
                self.condition.wait(wait)

    def _work(self):
        while (batch := self._next_batch()) is not None:
            key = batch[0].job.key
            batch.sort(key=lambda item: self.length(key, item.job.columns, item.index))
            columns = {name: [item.job.columns[name][item.index] for item in batch] for name in batch[0].job.columns}
            try:
                results, error = self.run(key, columns), None
            except Exception as exception:  # noqa: BLE001 (handed to the requests: the server's 500)
                results, error = None, exception
            answered = []  # (future, result or exception): set once the lock is released
            with self.condition:  # another worker may be answering other sentences of the same jobs
                self.pending -= len(batch)
                self.batches += 1
                self.sentences += len(batch)
                for position, item in enumerate(batch):
                    job = item.job
                    if job.left == 0:  # a batch of this request failed
                        continue
                    if error is not None:
                        job.left = 0
                        answered.append((job.future, error))
                        continue
                    job.results[item.index] = results[position]
                    job.left -= 1
                    if job.left == 0:
                        answered.append((job.future, job.results))
            for future, outcome in answered:
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)


def tensor_info(dtype, name):
    """A TensorInfo as TensorFlow Serving's metadata writes it, for a [batch] tensor."""
    return {"dtype": dtype, "tensor_shape": {"dim": [{"size": "-1", "name": ""}], "unknown_rank": False},
            "name": name}


class ModelDirBackend:
    """``serving_default`` of a trained model directory through ``translate.Translator``: the same
    search as ``translate.py``, with the n-best list and the attention on request."""

    def __init__(self, model_dir, beam_size=None):
        from seq2seq.model_dir import load_model

        self.config, self.tokenizer, self.model = load_model(model_dir)
        self.beam_size = beam_size or self.config.translate.beam_size
        self.version, self.source = "1", f"model directory {model_dir}, beam {self.beam_size}"
        self.max_n_best, self.attention = self.beam_size, True
        self.signatures = {DEFAULT_SIGNATURE: {
            "inputs": {"text": tensor_info("DT_STRING", "serving_default_text:0")},
            "outputs": {"translation": tensor_info("DT_STRING", "translation:0"),
                        "score": tensor_info("DT_FLOAT", "score:0")},
            "method_name": "tensorflow/serving/predict"}}
        # One search for the best translation, one for n-best lists, which keeps searching until
        # its beam_size-th best is final (the first n of those are the n best); each with and
        # without the attention history, all compiled now rather than at a first request.
        from seq2seq.translate import Translator

        self.translators = {wide: Translator(self.model, self.tokenizer, self.config.translate, self.beam_size,
                                             self.beam_size if wide else 1) for wide in (False, True)}
        for translator in self.translators.values():
            for attention in (False, True):
                translator.warm_up(attention)

    def run(self, key, columns):
        """key: (signature, n-best list wanted, attention); columns: {"text": [str]} -> one dict
        per sentence (with the beam_size best under "n_best", cut by the request's n_best)."""
        import numpy as np

        _, wide, attention = key
        lines = columns["text"]
        rows = []
        for hypotheses in self.translators[wide].hypotheses(lines, len(lines), attention):
            best = hypotheses[0]
            row = {"translation": best.text, "score": best.score}
            if wide:
                row["n_best"] = [{"translation": h.text, "score": h.score} for h in hypotheses]
            if attention:  # weights: [output pieces, source pieces]
                row["attention"] = {"source": best.source_pieces, "target": best.target_pieces,
                                    "weights": np.round(best.attention.astype(np.float64), 4).tolist()}
            rows.append(row)
        return rows


class SavedModelBackend:
    """Every signature of an exported SavedModel (``serving_default``; ``score`` where the model
    has it), called as TensorFlow Serving calls them: a batch of values per named input."""

    def __init__(self, path, version):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401 (registers the SentencePiece ops of the graph)
        from tensorflow.core.framework import types_pb2
        from tensorflow.core.protobuf import saved_model_pb2

        self.version, self.source = version, f"SavedModel {path}"
        self.max_n_best, self.attention = 1, False
        self.loaded = tf.saved_model.load(path)  # keeps the signatures' variables alive
        proto = saved_model_pb2.SavedModel()
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            proto.ParseFromString(f.read())

        def info(tensor):
            return {"dtype": types_pb2.DataType.Name(tensor.dtype), "name": tensor.name, "tensor_shape": {
                "dim": [{"size": str(d.size), "name": d.name} for d in tensor.tensor_shape.dim],
                "unknown_rank": tensor.tensor_shape.unknown_rank}}

        self.signatures, self.functions = {}, {}
        for name, signature in proto.meta_graphs[0].signature_def.items():
            if name in self.loaded.signatures:
                self.functions[name] = self.loaded.signatures[name]
                self.signatures[name] = {"inputs": {k: info(v) for k, v in signature.inputs.items()},
                                         "outputs": {k: info(v) for k, v in signature.outputs.items()},
                                         "method_name": signature.method_name}

    def run(self, key, columns):
        """key: (signature, 1, False); columns: input name -> values -> one dict per sentence."""
        import tensorflow as tf

        function = self.functions[key[0]]
        specs = function.structured_input_signature[1]
        outputs = function(**{name: tf.constant(values, specs[name].dtype) for name, values in columns.items()})
        arrays = {name: value.numpy() for name, value in outputs.items()}
        return [{name: plain(array[i]) for name, array in arrays.items()} for i in range(len(next(iter(
            columns.values()))))]


def plain(value):
    """A numpy scalar (or array) as JSON values: bytes decoded as UTF-8."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
