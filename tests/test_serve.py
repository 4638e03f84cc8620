"""The HTTP server: TensorFlow Serving's REST API over the toy model, the same translations as
translate.py, its error statuses, many clients at once, SIGTERM with requests in flight, the
batching queue on its own, and the page in a real headless Chromium."""

import concurrent.futures
import http.client
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT, assert_one_line_error, run_main
from seq2seq.servable import Batcher, QueueFull

PREDICT = "/v1/models/translate:predict"


class Server:
    """``python -m seq2seq.serve ARGS --port 0`` in a subprocess; its stderr lines are collected."""

    def __init__(self, *args):
        self.process = subprocess.Popen([sys.executable, "-m", "seq2seq.serve", *args, "--port", "0"], cwd=ROOT,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines, self.port = [], None
        listening = threading.Event()

        def read():
            for line in self.process.stderr:
                self.lines.append(line.rstrip("\n"))
                found = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line)
                if found:
                    self.port = int(found.group(1))
                    listening.set()
            listening.set()  # the process ended

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        listening.wait(300)
        assert self.port, "\n".join(self.lines)

    def request(self, method, path, body=None, headers=None):
        """Returns ``(status, parsed JSON answer)``; ``body``: bytes, or an object sent as JSON."""
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode("utf-8")
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        try:
            connection.request(method, path, body, headers or {})
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def predict(self, body, path=PREDICT):
        return self.request("POST", path, body)

    def stop(self, number=signal.SIGTERM):
        """Sends the signal; returns the exit status."""
        self.process.send_signal(number)
        code = self.process.wait(120)
        self.reader.join(10)
        return code


@pytest.fixture(scope="module")
def server(trained_toy):
    """One server of the toy model directory, with the default limits, for most tests; stopped
    as Ctrl-C stops it."""
    server = Server("--model", trained_toy)
    yield server
    assert server.stop(signal.SIGINT) == 0, "\n".join(server.lines)
    assert server.lines[-1].startswith("stopped by SIGINT: "), server.lines[-1]


@pytest.fixture(scope="module")
def test_lines(toy_data):
    with open(os.path.join(toy_data, "test.src"), encoding="utf-8") as f:
        return f.read().splitlines()


@pytest.fixture(scope="module")
def expected(trained_toy, test_lines):
    """translate.py's translation and --n-best 1 score of each test line."""
    result = run_main("translate.py", "--model", trained_toy, "--n-best", "1", stdin="\n".join(test_lines) + "\n")
    assert result.returncode == 0, result.stderr
    rows = [line.split(" ||| ") for line in result.stdout.splitlines()]
    assert len(rows) == len(test_lines)
    return {line: (row[1], float(row[2])) for line, row in zip(test_lines, rows)}


def test_rows_and_columns_give_translate_py_translations(server, test_lines, expected):
    lines = test_lines[:20]
    status, answer = server.predict({"instances": lines})
    assert status == 200, answer
    assert [p["translation"] for p in answer["predictions"]] == [expected[line][0] for line in lines]
    assert [p["score"] for p in answer["predictions"]] == pytest.approx([expected[line][1] for line in lines],
                                                                        abs=1e-3)
    status, answer = server.predict({"signature_name": "serving_default", "inputs": {"text": lines}})
    assert status == 200, answer
    assert sorted(answer["outputs"]) == ["score", "translation"]
    assert answer["outputs"]["translation"] == [expected[line][0] for line in lines]
    # Rows as objects with the input's name, columns as a bare list: TensorFlow Serving's other spellings.
    assert server.predict({"instances": [{"text": lines[0]}]})[1]["predictions"][0]["translation"] == expected[
        lines[0]][0]
    assert server.predict({"inputs": lines[:2]})[1]["outputs"]["translation"] == [expected[x][0] for x in lines[:2]]


def test_status_metadata_healthz_and_the_printed_limits(server):
    status, answer = server.request("GET", "/v1/models/translate")
    assert status == 200
    assert answer == {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                                "status": {"error_code": "OK", "error_message": ""}}]}
    assert server.request("GET", "/v1/models/translate/versions/1")[0] == 200
    status, answer = server.request("GET", "/v1/models/translate/metadata")
    assert status == 200
    assert answer["model_spec"] == {"name": "translate", "signature_name": "", "version": "1"}
    signature = answer["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["text"]["dtype"] == "DT_STRING"
    assert {name: info["dtype"] for name, info in signature["outputs"].items()} == {
        "translation": "DT_STRING", "score": "DT_FLOAT"}
    status, answer = server.request("GET", "/healthz")
    assert status == 200 and answer["status"] == "ok" and answer["model"] == "translate"
    limits = next(line for line in server.lines if line.startswith("limits: "))
    assert "256 sentences a request" in limits and "2000 characters a sentence" in limits
    assert "batches of up to 64 sentences" in limits and "1024 sentences queued" in limits


def test_n_best_and_attention_on_request(server, trained_toy, test_lines):
    line = test_lines[0]
    status, answer = server.predict({"instances": [line, ""], "n_best": 3, "attention": True})
    assert status == 200, answer
    best, empty = answer["predictions"]
    nbest = run_main("translate.py", "--model", trained_toy, "--n-best", "3", stdin=line + "\n")
    assert [(h["translation"], round(h["score"], 4)) for h in best["n_best"]] == pytest.approx(
        [(row.split(" ||| ")[1], float(row.split(" ||| ")[2])) for row in nbest.stdout.splitlines()], abs=1e-3)
    assert best["n_best"][0]["translation"] == best["translation"]
    attention = best["attention"]
    assert attention["source"] == [f"▁{word}" for word in line.split()] + ["</s>"]
    assert attention["target"][-1] == "</s>" and len(attention["target"]) == len(best["translation"].split()) + 1
    assert len(attention["weights"]) == len(attention["target"])
    for row in attention["weights"]:  # each output piece's attention is a distribution over the source
        assert len(row) == len(attention["source"]) and sum(row) == pytest.approx(1, abs=1e-3)
    assert empty == {"translation": "", "score": 0.0, "n_best": [{"translation": "", "score": 0.0}],
                     "attention": {"source": [], "target": [], "weights": []}}


def test_at_the_limits_and_odd_strings(server):
    status, answer = server.predict({"instances": [""] * 256})  # --max-sentences of them: answered
    assert status == 200 and [p["translation"] for p in answer["predictions"]] == [""] * 256
    status, answer = server.predict({"instances": ["s1 " * 666 + "s2", "\ud800 s3", "s4\u2028s5\x00", "  "]})
    assert status == 200, answer
    assert len(answer["predictions"]) == 4 and answer["predictions"][3]["translation"] == ""
    assert server.predict({"instances": []}) == (200, {"predictions": []})


HOSTILE = [  # (name, body, path, status, a fragment of the error)
    ("malformed JSON", b'{"instances": ["s1"', PREDICT, 400, "not valid UTF-8 JSON"),
    ("non-UTF-8 bytes", b'{"instances": ["s1 \xff\xfe s2"]}', PREDICT, 400, "not valid UTF-8 JSON"),
    ("deep nesting", b"[" * 100000, PREDICT, 400, "not valid UTF-8 JSON"),
    ("not an object", [["s1"]], PREDICT, 400, "must be a JSON object"),
    ("missing field", {"signature_name": "serving_default"}, PREDICT, 400, "has neither"),
    ("both formats", {"instances": ["s1"], "inputs": ["s1"]}, PREDICT, 400, "not both"),
    ("unknown field", {"instances": ["s1"], "nbest": 2}, PREDICT, 400, "unknown field 'nbest'"),
    ("unknown signature", {"signature_name": "nope", "instances": ["s1"]}, PREDICT, 400, "no signature 'nope'"),
    ("non-string instance", {"instances": ["s1", 7]}, PREDICT, 400, "instance 1: must be a string, got int"),
    ("null instance", {"instances": [None]}, PREDICT, 400, "instance 0: must be a string"),
    ("nested instance", {"instances": [["s1"]]}, PREDICT, 400, "instance 0: must be a string, got list"),
    ("instance with another name", {"instances": [{"source": "s1"}]}, PREDICT, 400, "inputs text"),
    ("instances not a list", {"instances": "s1 s2"}, PREDICT, 400, '"instances" must be a list'),
    ("inputs not a list", {"inputs": {"text": "s1"}}, PREDICT, 400, '"inputs"."text" must be a list'),
    ("non-string input", {"inputs": {"text": [True]}}, PREDICT, 400, '"inputs"."text"[0]: must be a string'),
    ("n_best out of range", {"instances": ["s1"], "n_best": 99}, PREDICT, 400, '"n_best" must be an integer'),
    ("attention not a boolean", {"instances": ["s1"], "attention": "yes"}, PREDICT, 400, '"attention" must be'),
    ("10 MB body", {"instances": ["s1 " * 4000] * 900}, PREDICT, 413, "request body over"),
    ("a million-character sentence", {"instances": ["s1" * 500000]}, PREDICT, 413,
     "1000000 characters; the limit is 2000"),
    ("1,000 empty strings", {"instances": [""] * 1000}, PREDICT, 413, "1000 instances; the limit is 256"),
    ("1,000 empty strings as columns", {"inputs": {"text": [""] * 1000}}, PREDICT, 413, "the limit is 256"),
    ("unknown model name", {"instances": ["s1"]}, "/v1/models/other:predict", 404, "Latest(other)"),
    ("unknown version", {"instances": ["s1"]}, "/v1/models/translate/versions/7:predict", 404,
     "Specific(translate, 7)"),
    ("unknown path", {"instances": ["s1"]}, "/v1/models/translate:classify", 404, "Servable not found"),
]


@pytest.mark.parametrize("name, body, path, status, fragment", HOSTILE, ids=[case[0] for case in HOSTILE])
def test_bad_requests_get_their_status_and_the_server_goes_on(server, name, body, path, status, fragment):
    answer_status, answer = server.predict(body, path)
    assert answer_status == status, answer
    assert list(answer) == ["error"] and fragment in answer["error"], answer
    assert server.request("GET", "/healthz")[0] == 200


def test_a_client_gone_halfway_through_its_body_does_not_wedge_the_server(server):
    import socket

    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
                     b'{"instances": ["s1')
    status, answer = server.predict({"instances": ["s1 s2"]})
    assert status == 200 and len(answer["predictions"]) == 1
    assert server.request("GET", "/healthz")[0] == 200


def test_wrong_methods_and_paths_get_json_errors(server):
    assert server.request("GET", PREDICT) == (405, {"error": "GET is not allowed here (POST for :predict, "
                                                             "GET otherwise)"})
    assert server.request("GET", "/v1/models/other") == (404, {"error": "Servable not found for request: "
                                                                        "Latest(other)"})
    assert server.request("GET", "/nowhere")[0] == 404
    assert server.request("DELETE", "/v1/models/translate")[0] == 405


def test_many_clients_at_once_each_get_their_own_answers(server, test_lines, expected):
    rng = random.Random(0)
    requests = [rng.sample(test_lines, rng.randint(1, 6)) for _ in range(48)]

    def send(lines):
        return server.predict({"instances": lines})

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(send, requests))
    for lines, (status, answer) in zip(requests, answers):
        assert status == 200, answer
        assert [p["translation"] for p in answer["predictions"]] == [expected[line][0] for line in lines]
    # The log has a line per request: method, path, status, sentences, milliseconds.
    logged = [line for line in server.lines if re.fullmatch(rf"POST {re.escape(PREDICT)} 200 \d+ sentences \d+ ms",
                                                            line)]
    assert len(logged) >= len(requests)


def test_savedmodel_sigterm_in_flight_and_the_full_queue(trained_toy, test_lines, expected, tmp_path):
    """A SavedModel served (its own signatures), a request held in the queue by a batch timeout
    longer than the test, another refused with 503 (queue full), then SIGTERM: the held one is
    answered at once (no more waiting for a fuller batch), and the server exits 0."""
    assert run_main("export", "--model", trained_toy, "--output", str(tmp_path / "export")).returncode == 0
    os.rename(tmp_path / "export" / "1", tmp_path / "export" / "3")  # the newest version is served
    os.makedirs(tmp_path / "export" / "2")  # no saved_model.pb: not a version
    server = Server("--export", str(tmp_path / "export"), "--max-sentences", "4", "--max-queue", "4",
                    "--batch-timeout-ms", "600000")
    try:
        assert any("(version 3;" in line for line in server.lines)
        status, answer = server.request("GET", "/v1/models/translate/metadata")
        assert answer["model_spec"]["version"] == "3"
        assert "serving_default" in answer["metadata"]["signature_def"]["signature_def"]
        status, answer = server.predict({"instances": ["s1"], "n_best": 2})
        assert status == 400 and "--model" in answer["error"]
        lines = test_lines[:4]
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            held = pool.submit(server.predict, {"instances": lines})
            while server.request("GET", "/healthz")[1]["queued"] < 4:
                time.sleep(0.05)
            status, answer = server.predict({"instances": ["s1"]})
            assert status == 503 and "queue is full" in answer["error"]
            server.process.send_signal(signal.SIGTERM)
            status, answer = held.result(120)
        deadline = time.monotonic() + 120
        while server.process.poll() is None and time.monotonic() < deadline:
            if server.lines[-1].startswith("stopped"):  # more SIGTERMs while the process exits change nothing
                server.process.send_signal(signal.SIGTERM)
            time.sleep(0.005)
        assert status == 200
        assert [p["translation"] for p in answer["predictions"]] == [expected[line][0] for line in lines]
        assert [p["score"] for p in answer["predictions"]] == pytest.approx([expected[x][1] for x in lines], abs=1e-3)
    finally:
        if server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(120)
    server.reader.join(10)
    assert code == 0, "\n".join(server.lines)
    assert "POST /v1/models/translate:predict 503 1 sentences" in "\n".join(server.lines)
    assert server.lines[-1].startswith("stopped by SIGTERM: 4 sentences translated")


def test_a_savedmodel_score_signature_is_served_with_its_two_inputs(tmp_path):
    """A SavedModel with a second signature of two inputs, as a ``score`` signature (text,
    translation -> log_prob, score) is: rows of objects and columns both reach it, in order."""
    import tensorflow as tf

    from seq2seq.serve import RequestError, answer, parse_predict
    from seq2seq.servable import SavedModelBackend

    module = tf.Module()
    strings = tf.TensorSpec([None], tf.string)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def translate(text):
        return {"translation": tf.strings.upper(text), "score": tf.zeros_like(text, tf.float32)}

    @tf.function(input_signature=[strings, strings])
    def score(text, translation):
        length = tf.cast(tf.strings.length(text) + 10 * tf.strings.length(translation), tf.float32)
        return {"log_prob": -length, "score": -length / 2}

    module.translate, module.score = translate, score
    tf.saved_model.save(module, str(tmp_path / "1"), signatures={"serving_default": translate, "score": score})
    backend = SavedModelBackend(str(tmp_path / "1"), "1")
    assert sorted(backend.signatures) == ["score", "serving_default"]
    assert sorted(backend.signatures["score"]["inputs"]) == ["text", "translation"]
    assert backend.signatures["score"]["outputs"]["log_prob"]["dtype"] == "DT_FLOAT"

    def call(body):
        key, n_best, columns, size, rows = parse_predict(body, backend, max_sentences=8, max_chars=100)
        return answer(rows, backend.run(key, columns), backend.signatures[key[0]]["outputs"])

    pairs = [{"text": "ab", "translation": "xyz"}, {"text": "", "translation": "q"}]
    assert call({"signature_name": "score", "instances": pairs}) == {"predictions": [
        {"log_prob": -32.0, "score": -16.0}, {"log_prob": -10.0, "score": -5.0}]}
    assert call({"signature_name": "score", "inputs": {"text": ["ab", ""], "translation": ["xyz", "q"]}}) == {
        "outputs": {"log_prob": [-32.0, -10.0], "score": [-16.0, -5.0]}}
    assert call({"instances": ["ab"]})["predictions"] == [{"translation": "AB", "score": 0.0}]
    for body, fragment in (({"signature_name": "score", "instances": ["ab"]}, "inputs text, translation"),
                           ({"signature_name": "score", "inputs": {"text": ["a"], "translation": []}},
                            "as many values"),
                           ({"signature_name": "score", "instances": [{"text": "a", "translation": 3}]},
                            "instance 0: translation: must be a string")):
        with pytest.raises(RequestError, match=fragment):
            call(body)


@pytest.mark.parametrize("args, fragments", [
    (["--export", "{tmp}/nothing"], ["nothing: export directory not found"]),
    (["--export", "{tmp}"], ["no version folder (1/, 2/, ...)"]),
    (["--model", "{tmp}/missing"], ["missing: model directory not found"]),
    (["--model", "{tmp}", "--max-sentences", "0"], ["--max-sentences must be positive, got 0"]),
    (["--model", "{tmp}", "--batch-timeout-ms", "-1"], ["--batch-timeout-ms must be non-negative"]),
    (["--model", "{tmp}", "--port", "70000"], ["--port must be at most 65535"]),
    (["--model", "{tmp}", "--max-queue", "8"], ["--max-queue (8) must be at least --max-sentences (256)"]),
    (["--export", "{tmp}", "--beam-size", "3"], ["--beam-size is for --model"]),
    (["--model", "{tmp}", "--name", "a/b"], ["--name must be a name without '/'"]),
    (["--model", "{model}", "--host", "192.0.2.1"], ["cannot listen on 192.0.2.1:8501"]),  # not this machine's
])
def test_command_line_errors(args, fragments, tmp_path, trained_toy):
    args = [arg.format(tmp=tmp_path, model=trained_toy) for arg in args]
    assert_one_line_error(run_main("serve", *args), *fragments)


def test_a_port_in_use_is_one_error_line(trained_toy):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert_one_line_error(run_main("serve", "--model", trained_toy, "--port", str(port)),
                              f"cannot listen on 127.0.0.1:{port}")


def test_load_test_clients_check_every_answer(server, test_lines, expected):
    from seq2seq.loadtest import draw_requests, drive

    requests = draw_requests(12, test_lines, most=4)
    assert all(1 <= len(r) <= 4 for r in requests) and requests == draw_requests(12, test_lines, most=4)
    right = [expected[line][0] for line in test_lines]
    figures = drive(server.port, requests, test_lines, right, clients=4, time_limit=300)
    assert (figures["requests_answered"], figures["errors"], figures["wrong"]) == (12, 0, 0)
    assert figures["sentences"] == sum(map(len, requests))
    figures = drive(server.port, requests[:3], test_lines, ["not it"] * len(test_lines), clients=2, time_limit=300)
    assert figures["wrong"] == sum(map(len, requests[:3]))


@pytest.mark.parametrize("args, fragments", [
    (["--model", "{tmp}/missing"], ["missing: model directory not found"]),
    (["--model", "{untrained}"], ["no trained checkpoint"]),
    (["--model", "{model}", "--requests", "0"], ["--requests must be positive"]),
    (["--model", "{model}", "--time-limit", "-5"], ["--time-limit must be positive"]),
])
def test_load_test_command_line_errors(args, fragments, tmp_path, trained_toy):
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    shutil.copy(os.path.join(trained_toy, "config.yaml"), untrained)
    args = [arg.format(tmp=tmp_path, model=trained_toy, untrained=untrained) for arg in args]
    assert_one_line_error(run_main("bench", "--serve", *args), *fragments)


def run_batches(batcher, submissions):
    """Submits ``(key, values)`` requests before the worker starts, starts it and closes the
    batcher (which answers what is queued without waiting for fuller batches); returns the
    requests' results."""
    futures = [batcher.submit(key, {"text": values}, len(values)) for key, values in submissions]
    batcher.start()
    batcher.close()
    return [future.result(0) for future in futures]


def test_batcher_merges_requests_sorted_by_length_and_routes_the_answers_back():
    calls = []

    def run(key, columns):
        calls.append((key, columns["text"]))
        return [f"{key}:{text.upper()}" for text in columns["text"]]

    batcher = Batcher(run, lambda key, columns, i: len(columns["text"][i]), max_batch_size=4, timeout=60,
                      max_queue=100)
    results = run_batches(batcher, [("a", ["ccc", "a"]), ("b", ["x"]), ("a", ["bb", "dddd", "e"]), ("a", [])])
    assert results == [["a:CCC", "a:A"], ["b:X"], ["a:BB", "a:DDDD", "a:E"], []]
    # The first full batch: four sentences of key a from two requests, sorted by length; then the
    # oldest waiting sentence's key (b), then the rest of a.
    assert calls == [("a", ["a", "bb", "ccc", "dddd"]), ("b", ["x"]), ("a", ["e"])]
    assert (batcher.batches, batcher.sentences, batcher.pending) == (3, 6, 0)


def test_a_draining_batcher_no_longer_waits_for_fuller_batches():
    batcher = Batcher(lambda key, columns: columns["text"], lambda key, columns, i: 0, max_batch_size=8,
                      timeout=3600, max_queue=8)
    batcher.start()
    future = batcher.submit("k", {"text": ["a", "b"]}, 2)
    batcher.drain()
    assert future.result(60) == ["a", "b"]
    assert batcher.submit("k", {"text": ["c"]}, 1).result(60) == ["c"]
    batcher.close()


def test_batcher_refuses_over_its_queue_and_hands_errors_to_the_requests():
    def run(key, columns):
        if "boom" in columns["text"]:
            raise RuntimeError("the search failed")
        return columns["text"]

    batcher = Batcher(run, lambda key, columns, i: 0, max_batch_size=1, timeout=0, max_queue=3)
    failing = batcher.submit("k", {"text": ["boom", "fine"]}, 2)
    with pytest.raises(QueueFull, match="queue is full"):
        batcher.submit("k", {"text": ["x", "y"]}, 2)
    batcher.start()
    with pytest.raises(RuntimeError, match="the search failed"):
        failing.result(30)
    assert batcher.submit("k", {"text": ["after"]}, 1).result(30) == ["after"]  # the worker goes on
    batcher.close()
    with pytest.raises(QueueFull, match="shutting down"):
        batcher.submit("k", {"text": ["late"]}, 1)


def find_browser():
    """Paths of Chromium and its driver, or None."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def test_the_page_in_headless_chromium(server, test_lines, expected, tmp_path):
    found = find_browser()
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no chromium and chromedriver: .ci/run installs them (apt-get install chromium chromium-driver)")
        pytest.skip("no chromium and chromedriver on this machine (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1100",
                 "--disable-gpu", "--no-first-run"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=found[1]))
    try:
        browser.get(f"http://127.0.0.1:{server.port}/")
        wait = WebDriverWait(browser, 60)
        button = browser.find_element(By.ID, "translate")
        wait.until(lambda _: button.is_enabled())  # the metadata has arrived
        line = test_lines[1]
        browser.find_element(By.ID, "source").send_keys(line)
        browser.find_element(By.ID, "n-best").clear()
        browser.find_element(By.ID, "n-best").send_keys("2")
        button.click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".result .translation"))
        assert browser.find_element(By.CSS_SELECTOR, ".result .translation").text == expected[line][0]
        assert len(browser.find_elements(By.CSS_SELECTOR, ".result .n-best li")) == 2
        assert not browser.find_element(By.ID, "heatmap-section").get_attribute("hidden")
        canvas = browser.find_element(By.ID, "heatmap")
        cells = len(line.split()) + 1  # source pieces and EOS
        cells *= len(expected[line][0].split()) + 1
        assert canvas.get_attribute("data-cells") == str(cells)
        # Pixels that are neither white nor the labels' ink: the heatmap's shaded cells.
        shaded = browser.execute_script("""
            const c = arguments[0], data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 0; i < data.length; i += 4)
              if (data[i + 2] > data[i] + 40 && data[i + 3] > 0) n++;
            return n;""", canvas)
        assert shaded > 10 * cells
        browser.save_screenshot(str(tmp_path / "page.png"))
        assert os.path.getsize(tmp_path / "page.png") > 0
    finally:
        browser.quit()


def test_two_batcher_workers_search_two_batches_at_once():
    both_running = threading.Barrier(2, timeout=30)  # broken (an error) unless two batches run at once

    def run(key, columns):
        both_running.wait()
        return [text.upper() for text in columns["text"]]

    batcher = Batcher(run, lambda key, columns, i: 0, max_batch_size=2, timeout=0, max_queue=100, workers=2)
    batcher.start()
    futures = [batcher.submit("k", {"text": [f"s{i}a", f"s{i}b"]}, 2) for i in range(6)]
    # A request spread over the two workers' batches is put together in its own order.
    futures.append(batcher.submit("k", {"text": ["x", "y", "z", "w"]}, 4))
    futures.append(batcher.submit("k", {"text": ["v", "u", "t", "r"]}, 4))  # 10 batches: 5 pairs
    results = [future.result(60) for future in futures]
    batcher.close()
    assert results[:6] == [[f"S{i}A", f"S{i}B"] for i in range(6)]
    assert results[6:] == [["X", "Y", "Z", "W"], ["V", "U", "T", "R"]]
    assert (batcher.batches, batcher.sentences, batcher.pending) == (10, 20, 0)
