"""Load test of ``seq2seq serve`` (``python -m seq2seq.bench --serve``): many clients on
127.0.0.1, every answer checked against ``translate.py``.

    python -m seq2seq.bench --serve [--model DIR] [--requests 2000] [--clients 32] [--time-limit 300]

The requests are drawn once (seeded): each holds 1 to 8 lines of test_2016_flickr.de. First
``translate.py --beam-size 5`` translates the whole test set (its sentences/s after start-up,
and the reference for every answer); then the server (``--model DIR --beam-size 5``) is started
twice, with dynamic batching (``--max-batch-size 64 --batch-timeout-ms 10``) and without
(``--max-batch-size 1``), and ``--clients`` threads, each on its own keep-alive connection,
send the requests as fast as answers come back, until all are sent or ``--time-limit`` seconds
have passed. Per run: requests and sentences answered, sentences/s, p50 and p99 latency of a
request, errors (a status other than 200, or no answer), wrong answers (a translation other than
translate.py's for that line), the mean batch size (the server's /healthz counters) and the
server's exit status after SIGTERM.
"""

import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

from seq2seq.errors import UserError

BEAM_SIZE = 5
SETTINGS = (("dynamic batching", ["--max-batch-size", "64", "--batch-timeout-ms", "10"]),
            ("batch size 1", ["--max-batch-size", "1", "--batch-timeout-ms", "0"]))


def draw_requests(count, lines, seed=1234, most=8):
    """``count`` requests, each a list of 1 to ``most`` line indices of ``lines``."""
    rng = random.Random(seed)
    return [[rng.randrange(len(lines)) for _ in range(rng.randint(1, most))] for _ in range(count)]


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else None


class ServerProcess:
    """``python -m seq2seq.serve ARGS --port 0`` with its stderr in a file; ready when it listens."""

    def __init__(self, args, log_path, startup_seconds=600):
        self.log_path = log_path
        self.log_file = open(log_path, "w", encoding="utf-8")
        self.process = subprocess.Popen([sys.executable, "-m", "seq2seq.serve", *args, "--host", "127.0.0.1",
                                         "--port", "0"], stdout=subprocess.DEVNULL, stderr=self.log_file)
        deadline = time.monotonic() + startup_seconds
        self.port = None
        while self.port is None:
            with open(log_path, encoding="utf-8") as f:
                found = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", f.read())
            if found:
                self.port = int(found.group(1))
            elif self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"the server did not start; its log: {log_path}")
            else:
                time.sleep(0.2)

    def get(self, path):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request("GET", path)
            return json.loads(connection.getresponse().read())
        finally:
            connection.close()

    def stop(self):
        """SIGTERM; returns the exit status."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(300)
        finally:
            self.log_file.close()


def drive(port, requests, lines, expected, clients, time_limit):
    """Sends ``requests`` from ``clients`` threads; returns the run's figures."""
    lock = threading.Lock()
    position = [0]
    latencies, sentences, errors, wrong = [], [0], [0], [0]
    started = time.perf_counter()
    stop_at = started + time_limit

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        while True:
            with lock:
                if position[0] >= len(requests) or time.perf_counter() > stop_at:
                    break
                indices = requests[position[0]]
                position[0] += 1
            body = json.dumps({"instances": [lines[i] for i in indices]})
            sent = time.perf_counter()
            try:
                connection.request("POST", "/v1/models/translate:predict", body,
                                   {"Content-Type": "application/json"})
                response = connection.getresponse()
                status, answer = response.status, json.loads(response.read())
            except (OSError, http.client.HTTPException, ValueError):
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
                status, answer = None, None
            latency = time.perf_counter() - sent
            with lock:
                if status != 200:
                    errors[0] += 1
                    continue
                latencies.append(latency)
                sentences[0] += len(indices)
                translations = [p["translation"].replace("\r", " ").replace("\n", " ") for p in answer["predictions"]]
                wrong[0] += sum(got != expected[i] for got, i in zip(translations, indices))
                wrong[0] += abs(len(translations) - len(indices))
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    return {"requests_sent": position[0], "requests_answered": len(latencies), "sentences": sentences[0],
            "seconds": round(seconds, 1), "sentences_per_sec": round(sentences[0] / seconds, 1),
            "p50_ms": round(1000 * percentile(latencies, 0.5)) if latencies else None,
            "p99_ms": round(1000 * percentile(latencies, 0.99)) if latencies else None,
            "errors": errors[0], "wrong": wrong[0], "cut_by_time_limit": position[0] < len(requests)}


def load_test(args, root, source, log):
    """The load test of the module docstring; returns its figures (a dict)."""
    requests_count, clients, time_limit = args.requests or 2000, args.clients or 32, args.time_limit or 300
    with open(os.path.join(root, source), encoding="utf-8") as f:
        lines = f.read().splitlines()
    requests = draw_requests(requests_count, lines)
    results = {"model": args.model, "beam_size": BEAM_SIZE, "clients": clients, "requests": requests_count,
               "time_limit_sec": time_limit, "sentences_in_requests": sum(map(len, requests))}
    with tempfile.TemporaryDirectory(prefix="seq2seq-loadtest-") as work:
        log(f"translate.py --beam-size {BEAM_SIZE} on {source} (the reference answers)")
        hypotheses, metrics = os.path.join(work, "reference"), os.path.join(work, "metrics.json")
        done = subprocess.run([sys.executable, "translate.py", "--model", args.model, "--input", source, "--output",
                               hypotheses, "--beam-size", str(BEAM_SIZE), "--metrics", metrics], cwd=root,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"translate.py failed: {done.stderr[-2000:]}")
        with open(hypotheses, encoding="utf-8") as f:
            expected = f.read().split("\n")[:-1]
        with open(metrics, encoding="utf-8") as f:
            results["translate_py_sentences_per_sec"] = json.load(f)["lines_per_sec"]
        for name, flags in SETTINGS:
            log(f"server, {name}: {requests_count} requests from {clients} clients (at most {time_limit} s)")
            server = ServerProcess(["--model", args.model, "--beam-size", str(BEAM_SIZE), "--max-queue", "4096",
                                    *flags], os.path.join(work, f"server.{len(results)}.log"))
            try:
                before = server.get("/healthz")
                figures = drive(server.port, requests, lines, expected, clients, time_limit)
                after = server.get("/healthz")
            finally:
                figures_exit = server.stop()
            batches = after["batches"] - before["batches"]
            figures.update(mean_batch_size=round((after["sentences"] - before["sentences"]) / max(batches, 1), 1),
                           server_exit_status=figures_exit, server_args=flags)
            results[name] = figures
    dynamic, single = results[SETTINGS[0][0]], results[SETTINGS[1][0]]
    results["dynamic_over_batch_size_1"] = round(dynamic["sentences_per_sec"] / max(single["sentences_per_sec"],
                                                                                     1e-9), 2)
    results["dynamic_over_translate_py"] = round(dynamic["sentences_per_sec"] /
                                                 max(results["translate_py_sentences_per_sec"], 1e-9), 2)
    return results


ROWS = (("requests answered (of those sent)", lambda r: f"{r['requests_answered']:,} ({r['requests_sent']:,})"),
        ("sentences answered", lambda r: f"{r['sentences']:,}"), ("seconds", lambda r: r["seconds"]),
        ("sentences/s", lambda r: r["sentences_per_sec"]), ("p50 latency (ms)", lambda r: r["p50_ms"]),
        ("p99 latency (ms)", lambda r: r["p99_ms"]), ("errors", lambda r: r["errors"]),
        ("wrong answers", lambda r: r["wrong"]), ("mean batch size", lambda r: r["mean_batch_size"]),
        ("server exit status after SIGTERM", lambda r: r["server_exit_status"]))


def print_table(results):
    names = [name for name, _ in SETTINGS]
    print(f"{results['clients']} clients, {results['requests']:,} requests of 1-8 sentences, beam "
          f"{results['beam_size']}, model {results['model']}")
    print(f"| figure | {' | '.join(names)} |\n| --- |{' --- |' * len(names)}")
    for label, value in ROWS:
        print(f"| {label} | {' | '.join(str(value(results[name])) for name in names)} |")
    print(f"translate.py beam {results['beam_size']}: {results['translate_py_sentences_per_sec']} sentences/s; "
          f"dynamic batching / batch size 1: {results['dynamic_over_batch_size_1']}×; dynamic batching / "
          f"translate.py: {results['dynamic_over_translate_py']}×")


def check(args):
    """Raises UserError, before any work, when the options or the model cannot give a load test."""
    from seq2seq.cli import require
    from seq2seq.model_dir import read_model_config

    require(args, positive=("requests", "clients", "time_limit"))
    read_model_config(args.model)
    if not any(os.path.isfile(os.path.join(args.model, folder, "checkpoint")) for folder in ("best", "checkpoints")):
        raise UserError(f"{args.model}: no trained checkpoint (train the model first, e.g. make train)")
