"""Shared fixtures: the toy task, a small trained model, running the command lines; a χ² test."""

import fcntl
import importlib.util
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # The suite runs its tests two at a time (make test): their ops are small, and one intra-op
    # thread a process (its subprocesses inherit it) keeps TensorFlow's thread pools from
    # contending for the cores.
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")


def load_script(name):
    """Imports a script from data/ (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "data", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


toy = load_script("toy")


def toy_config(data_dir, **overrides):
    """Config values (nested dict) for a tiny model on the toy task in ``data_dir``."""
    values = {
        "data": {"train_source": f"{data_dir}/train.src", "train_target": f"{data_dir}/train.tgt",
                 "valid_source": f"{data_dir}/valid.src", "valid_target": f"{data_dir}/valid.tgt"},
        "tokenizer": {"vocab_size": 64, "model_type": "word"},
        "model": {"embedding_dim": 32, "units": 64, "dropout": 0.0},
        "training": {"batch_tokens": 400, "max_length": 20, "learning_rate": 0.005, "label_smoothing": 0.0,
                     "max_steps": 600, "validate_every": 200, "log_every": 100, "epochs": 100, "patience": 10},
        "translate": {"min_output_length": 4, "batch_size": 32},
    }
    for key, value in overrides.items():
        section, name = key.split(".")
        values[section][name] = value
    return values


@pytest.fixture(autouse=True)
def float32_policy():
    """Every test starts and ends with Keras's default float32 policy, whatever a training with
    ``mixed_precision`` or ``bfloat16`` set globally."""
    yield
    if "keras" in sys.modules:
        sys.modules["keras"].mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy")
    toy.write_splits(str(path))
    return str(path)


def build_once(tmp_path_factory, name, build):
    """Runs ``build(folder)`` once for the whole test run, in a new folder; returns the folder.
    Under pytest-xdist the workers share it: the first to ask builds it in the run's common
    temporary folder while the others wait on a file lock."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        folder = str(tmp_path_factory.mktemp(name))
        build(folder)
        return folder
    folder = tmp_path_factory.getbasetemp().parent / name
    with open(f"{folder}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(f"{folder}.done"):
            shutil.rmtree(folder, ignore_errors=True)  # what a failed build left
            folder.mkdir()
            build(str(folder))
            open(f"{folder}.done", "w").close()
    return str(folder)


@pytest.fixture(scope="session")
def trained_toy(toy_data, tmp_path_factory):
    """A model directory trained on the toy task (about half a minute on 2 cores), read-only for
    the tests."""
    from seq2seq.config import config_from_dict
    from seq2seq.training import Trainer

    def train(folder):
        Trainer(config_from_dict(toy_config(toy_data)), os.path.join(folder, "model")).train()

    return os.path.join(build_once(tmp_path_factory, "toy_model", train), "model")


def shipped_sections(section):
    """pytest params of the distinct ``section`` parts (e.g. "model", "training") of the shipped
    configs, each named by the configs that use it."""
    import json

    import yaml

    sections = {}
    for name in sorted(os.listdir(os.path.join(ROOT, "configs"))):
        with open(os.path.join(ROOT, "configs", name), encoding="utf-8") as f:
            part = yaml.safe_load(f)[section]
        sections.setdefault(json.dumps(part, sort_keys=True), []).append(name)
    return [pytest.param(json.loads(key), id="+".join(names)) for key, names in sections.items()]


def write_yaml(path, values):
    import yaml

    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(values, f)
    return str(path)


def run_script(script, *args, stdin=None, cwd=ROOT):
    """Runs ``python script args...`` from the repository root; returns the CompletedProcess."""
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], input=stdin, capture_output=True,
                          text=True, cwd=cwd, timeout=600)


def run_main(command, *args, stdin=None):
    """Runs a command line (``train.py``, ``translate.py``, ``export``, ``serve`` or ``bench``) in this
    process, as its script would, with ``stdin`` (str) as standard input; returns an object with
    ``returncode``, ``stdout`` and ``stderr``, like ``run_script``'s. For error paths and
    outputs, without the start-up of a new process."""
    import contextlib
    import io
    import types

    from seq2seq import bench, cli, export, serve
    from seq2seq.errors import run_cli

    main = {"train.py": cli.train_main, "translate.py": cli.translate_main, "export": export.main,
            "serve": serve.main, "bench": bench.main}[command]
    stdout, stderr = io.StringIO(), io.StringIO()
    fake_stdin = io.TextIOWrapper(io.BytesIO((stdin or "").encode("utf-8")), encoding="utf-8")
    saved_stdin = sys.stdin
    try:
        sys.stdin = fake_stdin
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = run_cli(main, list(args))
    finally:
        sys.stdin = saved_stdin
    return types.SimpleNamespace(returncode=code, stdout=stdout.getvalue(), stderr=stderr.getvalue())


def assert_one_line_error(result, *fragments):
    """The command failed with exactly one ``error: ...`` line on stderr containing ``fragments``."""
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def chi_square(counts, probs):
    """Pearson's statistic of ``counts`` against ``probs``, bins of expected count below 5 merged;
    returns (statistic, degrees of freedom)."""
    expected = probs * counts.sum()
    order = np.argsort(-expected)
    kept = [i for i in order if expected[i] >= 5]
    rest = [i for i in order if expected[i] < 5]
    bins = [[i] for i in kept]
    if rest:
        if expected[rest].sum() >= 5 or not bins:
            bins.append(rest)
        else:
            bins[-1] += rest
    observed = np.array([counts[b].sum() for b in bins], float)
    wanted = np.array([expected[b].sum() for b in bins])
    with np.errstate(divide="ignore"):
        statistic = np.sum(np.where(wanted > 0, (observed - wanted) ** 2 / wanted, np.where(observed > 0, np.inf, 0)))
    return statistic, len(bins) - 1


def chi_square_999(df):
    """The 0.999 quantile of the χ² distribution (Wilson-Hilferty's approximation)."""
    return df * (1 - 2 / (9 * df) + 3.0902 * math.sqrt(2 / (9 * df))) ** 3
