"""Robustness: messy corpora, bad configs, killed and diverging training, any input to translate."""

import builtins
import io
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, assert_one_line_error, run_main, run_script, toy_config, write_yaml
from seq2seq.config import config_from_dict
from seq2seq.corpus import read_lines
from seq2seq.errors import DataError, UserError


def _copy_toy(toy_data, target_dir):
    os.makedirs(target_dir, exist_ok=True)
    for name in os.listdir(toy_data):
        shutil.copy(os.path.join(toy_data, name), target_dir)
    return str(target_dir)


# -- corpora ------------------------------------------------------------------------------------


def test_messy_corpus_trains_and_every_oddity_is_counted(toy_data, tmp_path):
    data = _copy_toy(toy_data, tmp_path / "data")
    with open(os.path.join(data, "train.src"), "rb") as f:
        source = f.read().split(b"\n")[:-1]
    with open(os.path.join(data, "train.tgt"), "rb") as f:
        target = f.read().split(b"\n")[:-1]
    source[0] = b"\xef\xbb\xbf" + source[0]  # a byte order mark
    source[1], target[1] = b"", target[1]  # an empty source line
    source[2], target[2] = source[2], b"   \t "  # a blank target line
    source[3] = source[3] + b" \x00 s1"  # a NUL
    source[4] = source[4] + b" \x07\x1b s2"  # other control characters
    source[5] = b" ".join([b"s1"] * 33_000)  # about 100,000 characters
    with open(os.path.join(data, "train.src"), "wb") as f:
        f.write(b"\r\n".join(source[:10]) + b"\r\n" + b"\n".join(source[10:]) + b"\n")  # 10 CRLF endings
    with open(os.path.join(data, "train.tgt"), "wb") as f:
        f.write(b"\n".join(target) + b"\n")
    config = write_yaml(tmp_path / "config.yaml", toy_config(data, **{"training.max_steps": 20,
                                                                      "training.validate_every": 20}))
    result = run_script("train.py", "--config", config, "--model-dir", str(tmp_path / "model"))
    assert result.returncode == 0, result.stderr
    epoch_line = next(line for line in result.stderr.splitlines() if "training data:" in line)
    assert f"{len(source) - 3} pairs kept of {len(source)} lines (2 empty, 1 longer than the length limit)" \
        in epoch_line
    assert "10 CRLF line endings" in epoch_line and "1 byte order mark" in epoch_line
    assert "2 lines with control characters" in epoch_line


def test_read_lines_strips_crlf_and_bom_only(tmp_path):
    path = tmp_path / "text"
    path.write_bytes(b"\xef\xbb\xbfone\r\ntwo\rstill two\n\xef\xbb\xbfthree\nfour")
    assert list(read_lines(str(path))) == [(1, "one"), (2, "two\rstill two"), (3, "\ufeffthree"), (4, "four")]


def test_unreadable_corpus_file_is_one_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "secret.txt"
    path.write_text("a\n")
    real_open = builtins.open

    def no_permission(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_permission)
    with pytest.raises(DataError, match=r"secret\.txt: cannot read \(Permission denied\)"):
        list(read_lines(str(path)))


def test_vocabulary_too_small_for_the_characters_names_the_key(tmp_path):
    letters = "abcdefghijklmnopqrstuvwxyzäöüß"
    lines = "".join(f"{letters[i:]}{letters[:i]}\n" for i in range(len(letters)))
    for name in ("train.src", "train.tgt", "valid.src", "valid.tgt"):
        (tmp_path / name).write_text(lines, encoding="utf-8")
    values = toy_config(str(tmp_path), **{"tokenizer.vocab_size": 20, "tokenizer.model_type": "unigram"})
    config = write_yaml(tmp_path / "config.yaml", values)
    result = run_main("train.py", "--config", config, "--model-dir", str(tmp_path / "model"))
    assert_one_line_error(result, "tokenizer.vocab_size", "20 is too small for the 31 different characters",
                          "at least 35")


# -- training faults ----------------------------------------------------------------------------


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoints(toy_data, tmp_path):
    import tensorflow as tf

    from seq2seq.training import Trainer

    model_dir = str(tmp_path / "model")
    values = toy_config(toy_data, **{"training.max_steps": 60, "training.validate_every": 60})
    Trainer(config_from_dict(values), model_dir).train()
    before = {folder: sorted(os.listdir(os.path.join(model_dir, folder))) for folder in ("checkpoints", "best")}
    best_before = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(model_dir, "best")))

    trainer = Trainer(config_from_dict(values, ["training.max_steps=200"]), model_dir)
    real_build = trainer._build

    def build_with_a_diverging_step(total_steps):
        real_build(total_steps)
        real_step, calls = trainer.train_step, []

        def train_step(source, target):
            loss, tokens = real_step(source, target)
            calls.append(1)
            return (tf.constant(float("nan")) if len(calls) == 5 else loss), tokens

        trainer.train_step = train_step

    trainer._build = build_with_a_diverging_step
    with pytest.raises(UserError, match=r"training diverged at step 65: the loss is nan; lower "
                                        r"training\.learning_rate or training\.clip_norm"):
        trainer.train()
    after = {folder: sorted(os.listdir(os.path.join(model_dir, folder))) for folder in ("checkpoints", "best")}
    assert after == before
    best_after = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(model_dir, "best")))
    for name in best_before.get_variable_to_shape_map():
        assert np.array_equal(best_before.get_tensor(name), best_after.get_tensor(name))


def test_a_loss_far_above_a_uniform_guess_stops_training_before_anything_is_saved(toy_data, tmp_path):
    # A learning rate far too high without clipping: the loss stays finite but in the hundreds.
    config = write_yaml(tmp_path / "config.yaml", toy_config(toy_data, **{
        "training.learning_rate": 30.0, "training.clip_norm": 1e30, "training.log_every": 10,
        "training.validate_every": 50}))
    result = run_script("train.py", "--config", config, "--model-dir", str(tmp_path / "model"))
    assert_one_line_error(result, "training diverged at step 30: the mean loss is",
                          "above 2 ln V = 7.57 (twice a uniform guess over the 44 target subwords) from step 0 to 30",
                          "lower training.learning_rate or training.clip_norm",
                          "resume from the start (no checkpoint was saved)")
    assert result.returncode == 2
    assert not os.path.exists(tmp_path / "model" / "checkpoints")


def test_a_diverging_loss_when_a_checkpoint_is_due_stops_without_saving(toy_data, tmp_path):
    import tensorflow as tf

    from seq2seq.training import Trainer

    model_dir = str(tmp_path / "model")
    values = toy_config(toy_data, **{"training.max_steps": 60, "training.validate_every": 60})
    Trainer(config_from_dict(values), model_dir).train()
    before = {folder: sorted(os.listdir(os.path.join(model_dir, folder))) for folder in ("checkpoints", "best")}
    trainer = Trainer(config_from_dict(values, ["training.max_steps=200", "training.validate_every=80"]), model_dir)
    real_build = trainer._build

    def build_with_a_diverging_step(total_steps):
        real_build(total_steps)
        real_step, calls = trainer.train_step, []

        def train_step(source, target):
            loss, tokens = real_step(source, target)
            calls.append(1)
            return (tf.constant(1e6) if len(calls) >= 5 else loss), tokens

        trainer.train_step = train_step

    trainer._build = build_with_a_diverging_step
    # Steps 61-80 are fewer than one log interval (100): the validation's checkpoint is refused.
    with pytest.raises(UserError, match=r"training diverged at step 80: the mean loss is [5-9]\.\d+e\+05, above 2 ln V = "
                                        r"7\.57 .* when a checkpoint was due; .* resume from the last checkpoint "
                                        r"\(step 60\)"):
        trainer.train()
    assert {folder: sorted(os.listdir(os.path.join(model_dir, folder))) for folder in ("checkpoints", "best")} == before


# The child kills itself with SIGKILL at the N-th update of a checkpoint state file: the new
# checkpoint's files are written but not yet listed (odd N), or the old ones are being deleted
# (even N) - the moments a checkpoint write is in flight.
KILL_INSIDE_SAVE = r"""
import os, runpy, signal, sys
from tensorflow.python.checkpoint import checkpoint_management
kill_at, calls, record_state = int(os.environ["KILL_AT_RECORD"]), [0], checkpoint_management.CheckpointManager._record_state

def record_state_or_die(self):
    calls[0] += 1
    if calls[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return record_state(self)

checkpoint_management.CheckpointManager._record_state = record_state_or_die
sys.argv = ["train.py"] + sys.argv[1:]
runpy.run_path("train.py", run_name="__main__")
"""


def _latest_step(model_dir):
    import tensorflow as tf

    path = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    return int(path.rsplit("-", 1)[1]) if path else 0


def test_sigkill_at_any_moment_loses_at_most_the_steps_since_the_last_checkpoint(toy_data, tmp_path):
    model_dir = str(tmp_path / "model")
    config = write_yaml(tmp_path / "config.yaml", toy_config(toy_data, **{
        "training.max_steps": 240, "training.validate_every": 60, "training.log_every": 10,
        "training.average_checkpoints": 2}))
    command = [sys.executable, "-c", KILL_INSIDE_SAVE, "--config", config, "--model-dir", model_dir]
    # (how to kill, when): after a log line appears, or inside a checkpoint write.
    # Saves at step 60 update state files 6 times (best, averaging, checkpoints: each before and
    # after pruning): the 6th is the training checkpoint's pruning. A run resumed at step 60 goes
    # on with its epoch (85 batches), whose end saves the state at step 85 (2 updates), so the
    # 3rd update is the best model's first at the validation of step 120.
    moments = [("line", "training SentencePiece"), ("line", "step 30/"), ("record", 6), ("record", 3),
               ("line", "validation at step 180")]
    resumed = []
    for how, when in moments:
        resume_step = _latest_step(model_dir)
        resumed.append(resume_step)
        env = {**os.environ, "KILL_AT_RECORD": str(when if how == "record" else 10**9)}
        child = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
        output = []
        for line in child.stderr:
            output.append(line)
            if how == "line" and when in line:
                child.send_signal(signal.SIGKILL)
                break
        child.stderr.close()
        assert child.wait(timeout=600) == -signal.SIGKILL, "".join(output)
        text = "".join(output)
        if resume_step:  # the run resumed from the last complete checkpoint
            assert f"at step {resume_step} (" in text, text
    resume_step = _latest_step(model_dir)
    # Nothing was saved before step 60; the kill while pruning at 60 kept checkpoint 60; the kill
    # inside the saves of step 120 left the epoch's end, 85, the last complete one; the last kill
    # came after the next epoch's end (170) and before or after the save of step 180.
    assert resumed == [0, 0, 0, 60, 85] and resume_step in (170, 180), (resumed, resume_step)
    final = subprocess.run([sys.executable, "train.py", "--config", config, "--model-dir", model_dir], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    assert f"at step {resume_step} (" in final.stderr
    assert "training done at step 240" in final.stderr
    history = [json.loads(line) for line in open(os.path.join(model_dir, "validation.jsonl")) if line.strip()]
    assert history[-1]["averaged_steps"] == [180, 240]
    # The best model loads and translates.
    result = run_script("translate.py", "--model", model_dir, stdin="s1 s2 s3\n")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1 and result.stdout.strip()


# -- model directories --------------------------------------------------------------------------


def _copy_model(trained_toy, target):
    shutil.copytree(trained_toy, target)
    return str(target)


def test_model_directory_from_an_incompatible_version(trained_toy, tmp_path):
    model_dir = _copy_model(trained_toy, tmp_path / "model")
    with open(os.path.join(model_dir, "format.json"), "w") as f:
        json.dump({"format": 99, "tensorflow": "9.0"}, f)
    result = run_main("translate.py", "--model", model_dir, stdin="s1\n")
    assert_one_line_error(result, "model directory format 99", "reads format 1")
    result = run_main("export", "--model", model_dir, "--output", str(tmp_path / "export"))
    assert_one_line_error(result, "model directory format 99")


def test_corrupt_or_partial_model_directory(trained_toy, tmp_path):
    corrupt = _copy_model(trained_toy, tmp_path / "corrupt")
    best = os.path.join(corrupt, "best")
    for name in os.listdir(best):
        if name.endswith(".index"):
            with open(os.path.join(best, name), "wb") as f:
                f.write(b"not a checkpoint index")
    assert_one_line_error(run_main("translate.py", "--model", corrupt, stdin="s1\n"), "cannot restore the model")
    partial = _copy_model(trained_toy, tmp_path / "partial")
    os.remove(os.path.join(partial, "spm.model"))
    assert_one_line_error(run_main("translate.py", "--model", partial, stdin="s1\n"),
                          "spm.model: SentencePiece model not found")
    bad_config = _copy_model(trained_toy, tmp_path / "bad_config")
    with open(os.path.join(bad_config, "config.yaml"), "a") as f:
        f.write("future_section:\n  key: 1\n")
    assert_one_line_error(run_main("translate.py", "--model", bad_config, stdin="s1\n"),
                          "invalid model config", "unknown config key future_section")


# -- translation of any input -------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_translator(trained_toy):
    from seq2seq.model_dir import load_model
    from seq2seq.translate import Translator

    config, tokenizer, model = load_model(trained_toy)
    return Translator(model, tokenizer, config.translate, beam_size=2)


def _translate_bytes(translator, data):
    """What translate.py does with a byte stream: returns the bytes it writes."""
    from seq2seq.translate import line_chunks, one_line

    out = io.StringIO()
    translator.translate_stream(line_chunks(io.BytesIO(data), max_lines=4),
                                lambda i, hyps: out.write(one_line(hyps[0].text) + "\n"), batch_size=3)
    return out.getvalue().encode("utf-8")


def _count_lines(data):
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


LINE_BYTES = st.lists(st.one_of(
    st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")),
    st.text(max_size=20).map(lambda t: t.encode("utf-8").replace(b"\n", b"")),
    st.lists(st.sampled_from(["s1", "s2", "s7", " ", "\t", "\r", "\x00", "\u2028", "\x85", "\ufeff", "\xa0"]),
             max_size=12).map(lambda parts: "".join(parts).encode("utf-8")),
), max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(lines=LINE_BYTES, final_newline=st.booleans())
def test_any_bytes_give_exactly_one_output_line_per_input_line(toy_translator, lines, final_newline):
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    output = _translate_bytes(toy_translator, data)
    assert _count_lines(data) == output.count(b"\n")
    assert output == b"" or output.endswith(b"\n")


def test_translate_py_with_hostile_bytes_keeps_the_line_count(trained_toy):
    data = (b"s1 s2\r\n\xef\xbb\xbfs3\n\xff\xfe\xfd\n\x00\x00\n\n   \n s4\rs5 \n\xe2\x80\xa8\n"
            + b"s1 " * 40_000 + b"\ns6\xc3")
    result = subprocess.run([sys.executable, "translate.py", "--model", trained_toy], input=data, cwd=ROOT,
                            capture_output=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(b"\n") == _count_lines(data) == 10
    outputs = result.stdout.decode("utf-8").split("\n")
    assert outputs[4] == outputs[5] == ""  # the empty and the blank line
    assert b"<stdin>:9: longer than translate.max_input_length" in result.stderr
    assert b"Traceback" not in result.stderr


def test_translate_py_streams_its_output_before_the_input_ends(trained_toy):
    from seq2seq.translate import CHUNK_LINES

    child = subprocess.Popen([sys.executable, "translate.py", "--model", trained_toy, "--beam-size", "1"], cwd=ROOT,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        child.stdin.write(b"s1 s2 s3\n" * CHUNK_LINES)
        child.stdin.flush()
        # The input is still open: the first chunk's translations arrive anyway.
        first = [child.stdout.readline() for _ in range(CHUNK_LINES)]
        assert all(line.endswith(b"\n") and line.strip() for line in first)
        child.stdin.write(b"s4\n")
        child.stdin.close()
        assert child.stdout.read().count(b"\n") == 1
        assert child.wait(timeout=600) == 0
    finally:
        child.kill()


def _next_within(chunks, seconds=10.0):
    """``next(chunks)`` run in a thread: fails instead of hanging if it waits for more input."""
    import threading

    result = []
    thread = threading.Thread(target=lambda: result.append(next(chunks, None)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert result, "line_chunks waited for more input although a complete line was there"
    return result[0]


def test_line_chunks_yield_what_has_arrived_on_an_open_pipe():
    from seq2seq.translate import line_chunks

    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as reader:
        chunks = line_chunks(reader, max_lines=300)
        os.write(write_end, b"\xef\xbb\xbfs1 s2\r\n")
        assert _next_within(chunks) == ["s1 s2"]  # the BOM and the \r dropped
        os.write(write_end, b"s3")  # no complete line yet: nothing is yielded until the rest comes
        os.write(write_end, b" s4\n\xef\xbb\xbfs5\xff\n")
        assert _next_within(chunks) == ["s3 s4", "\ufeffs5\ufffd"]  # a BOM inside the stream is text
        os.write(write_end, b"".join(b"s%d\n" % (i % 10) for i in range(1000)))  # a burst, in one write
        assert [len(_next_within(chunks)) for _ in range(4)] == [300, 300, 300, 100]
        os.write(write_end, b"last line without newline")
        os.close(write_end)
        assert _next_within(chunks) == ["last line without newline"]
        assert _next_within(chunks) is None


def test_line_chunks_of_a_file_are_full(tmp_path):
    from seq2seq.translate import line_chunks

    path = tmp_path / "input.txt"
    path.write_bytes(b"".join(b"s%d\n" % (i % 10) for i in range(2500)))
    with open(path, "rb") as f:
        assert [len(chunk) for chunk in line_chunks(f, max_lines=1000)] == [1000, 1000, 500]


# Counts the search calls (the rows of each) of translate.py and prints them to stderr at exit.
COUNTED_TRANSLATE = r"""
import atexit, runpy, sys
from seq2seq import search
rows, call = [], search.Searcher.__call__
def counted(self, source, *args, **kwargs):
    rows.append(len(source))
    return call(self, source, *args, **kwargs)
search.Searcher.__call__ = counted
atexit.register(lambda: print("search rows:", rows, file=sys.stderr))
sys.argv = ["translate.py"] + sys.argv[1:]
runpy.run_path("translate.py", run_name="__main__")
"""


def test_translate_py_answers_each_line_on_an_open_pipe_and_batches_bursts(trained_toy):
    import re
    import select
    import time

    child = subprocess.Popen([sys.executable, "-c", COUNTED_TRANSLATE, "--model", trained_toy, "--batch-size", "32"],
                             cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             bufsize=0)
    received = b""

    def read_lines(count, seconds):
        nonlocal received
        deadline = time.monotonic() + seconds
        while received.count(b"\n") < count:
            assert time.monotonic() < deadline, f"no answer after {seconds} s; got {received!r}"
            if select.select([child.stdout], [], [], 0.1)[0]:
                received += os.read(child.stdout.fileno(), 1 << 16)

    try:
        child.stdin.write(b"s1 s2 s3\n")
        read_lines(1, 300)  # loading the model and compiling the search
        child.stdin.write(b"s4 s5\n")
        read_lines(2, 5)  # the model is loaded: a line is answered at once
        burst = b"".join(b"s%d s%d\n" % (i % 20, i % 7) for i in range(1000))
        os.write(child.stdin.fileno(), burst)
        read_lines(1002, 300)
        child.stdin.close()
        stderr = child.stderr.read()
        child.wait(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0, stderr
    assert received.count(b"\n") == 1002
    rows = [int(n) for n in re.search(rb"search rows: \[([\d, ]*)\]", stderr).group(1).split(b",")]
    warm_up, first, second, burst_rows = rows[0], rows[1], rows[2], rows[3:]
    assert (warm_up, first, second) == (1, 1, 1)
    # The burst arrived together: translated in full batches of 32, not line by line.
    assert sum(burst_rows) == 1000 and len(burst_rows) <= 1000 // 32 + 2, burst_rows
