"""Dynamic batching for the server, as TensorFlow Serving batches: the sentences of requests
that arrive close together go through one search call.

Each request (a ``Job``) puts its sentences on one queue. One worker thread takes the oldest
waiting sentence and the others that share its ``key`` (the signature and the request's options,
which one search call must share), up to ``max_batch_size`` of them, waiting for more at most
``timeout`` seconds after that oldest sentence arrived; it sorts them by length (less padding),
runs them as one batch and hands every request its own results, in its own order, through a
``concurrent.futures.Future``. A request larger than a batch is spread over several batches.
The worker runs off the event loop: the server stays responsive while a batch is searched.

``max_queue`` bounds the sentences accepted and not yet answered (waiting or being searched); a
request that would go over it is refused with ``QueueFull`` (the server's 503).
"""

import collections
import concurrent.futures
import threading
import time


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
    submitted with the same key, in one worker thread.

    ``length(key, columns, index)`` orders a batch's sentences (by their length).
    """

    def __init__(self, run, length, max_batch_size, timeout, max_queue):
        self.run, self.length = run, length
        self.max_batch_size, self.timeout, self.max_queue = max_batch_size, timeout, max_queue
        self.queue = collections.deque()  # Items waiting, oldest first
        self.pending = 0  # sentences accepted and not yet answered
        self.batches = self.sentences = 0  # batches run and their sentences, for /healthz
        self.closed = False
        self.condition = threading.Condition()
        self.worker = threading.Thread(target=self._work, name="batcher", daemon=True)

    def start(self):
        self.worker.start()

    def close(self):
        """Stops taking requests, answers those queued, then stops the worker."""
        with self.condition:
            self.closed = True
            self.condition.notify_all()
        if self.worker.is_alive():
            self.worker.join()

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
                if len(same) == self.max_batch_size or wait <= 0 or self.closed:
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
            with self.condition:
                self.pending -= len(batch)
                self.batches += 1
                self.sentences += len(batch)
            for position, item in enumerate(batch):
                job = item.job
                if job.future.done():  # an earlier batch of this request failed
                    continue
                if error is not None:
                    job.future.set_exception(error)
                    continue
                job.results[item.index] = results[position]
                job.left -= 1
                if job.left == 0:
                    job.future.set_result(job.results)
