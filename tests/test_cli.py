"""The command lines as a user runs them: outputs, and one clear line for every mistake."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, assert_one_line_error, run_main, run_script, toy, toy_config, write_yaml


@pytest.fixture
def toy_yaml(toy_data, tmp_path):
    return write_yaml(tmp_path / "toy.yaml", toy_config(toy_data))


def test_train_missing_data_file(toy_data, tmp_path):
    values = toy_config(toy_data)
    values["data"]["train_source"] = str(tmp_path / "nowhere.src")
    result = run_main("train.py", "--config", write_yaml(tmp_path / "c.yaml", values),
                        "--model-dir", str(tmp_path / "m"))
    assert_one_line_error(result, "config key data.train_source", "nowhere.src", "file not found")
    assert not os.path.exists(tmp_path / "m")


def test_train_line_counts_differ(toy_data, tmp_path):
    short = tmp_path / "short.tgt"
    short.write_text("".join(open(f"{toy_data}/train.tgt").readlines()[:-5]))
    values = toy_config(toy_data)
    values["data"]["train_target"] = str(short)
    result = run_main("train.py", "--config", write_yaml(tmp_path / "c.yaml", values),
                        "--model-dir", str(tmp_path / "m"))
    assert_one_line_error(result, "train.src has 4000 lines", "short.tgt has 3995")


def test_train_unknown_config_key(toy_data, tmp_path):
    values = toy_config(toy_data)
    values["model"]["layers"] = 2
    result = run_main("train.py", "--config", write_yaml(tmp_path / "c.yaml", values))
    assert_one_line_error(result, "c.yaml", "unknown config key model.layers")


def test_train_unknown_set_key(toy_yaml):
    result = run_main("train.py", "--config", toy_yaml, "--set", "training.steps=10")
    assert_one_line_error(result, "--set training.steps", "unknown config key")


def test_train_bad_set_value(toy_yaml):
    result = run_main("train.py", "--config", toy_yaml, "--set", "model.dropout=1.5")
    assert_one_line_error(result, "model.dropout", "[0, 1)")


def test_train_missing_config_file(tmp_path):
    result = run_main("train.py", "--config", str(tmp_path / "none.yaml"))
    assert_one_line_error(result, "none.yaml", "not found")


def test_translate_model_dir_that_is_not_one(tmp_path):
    result = run_main("translate.py", "--model", str(tmp_path), stdin="a\n")
    assert_one_line_error(result, str(tmp_path), "not a model directory")
    result = run_main("translate.py", "--model", str(tmp_path / "missing"), stdin="a\n")
    assert_one_line_error(result, "model directory not found")


def test_translate_model_dir_without_checkpoint(trained_toy, tmp_path):
    empty = tmp_path / "untrained"
    empty.mkdir()
    for name in ("config.yaml", "spm.model"):
        (empty / name).write_bytes(open(os.path.join(trained_toy, name), "rb").read())
    result = run_main("translate.py", "--model", str(empty), stdin="s1\n")
    assert_one_line_error(result, "no trained checkpoint")


def test_translate_missing_input_and_bad_reference(trained_toy, tmp_path):
    result = run_main("translate.py", "--model", trained_toy, "--input", str(tmp_path / "none.txt"))
    assert_one_line_error(result, "none.txt", "file not found")
    reference = tmp_path / "ref.txt"
    reference.write_text("T1\n")
    result = run_main("translate.py", "--model", trained_toy, "--reference", str(reference), stdin="s1\ns2\n")
    assert_one_line_error(result, "ref.txt has 1 lines", "has 2")


def test_translate_keeps_one_line_per_input_line_in_order(trained_toy):
    lines = ["s1 s2 s3", "", "s4 s5 s6 s7 s8 s9 s10 s11", "   ", "s12 s0 s5", "s13 s14 s15 s16"]
    result = run_main("translate.py", "--model", trained_toy, "--batch-size", "2",
                        stdin="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr
    outputs = result.stdout.split("\n")[:-1]
    assert len(outputs) == len(lines)
    assert outputs[1] == "" and outputs[3] == ""
    for line, output in zip(lines, outputs):
        if line.strip():  # in order: each output has its own input's length and (mostly) its words
            assert len(output.split()) == len(line.split())
    assert outputs[0] == " ".join(toy.translate(lines[0].split()))
    assert outputs[4] == " ".join(toy.translate(lines[4].split()))


def test_translate_files_and_reference_prints_bleu_and_chrf(trained_toy, toy_data, tmp_path):
    output, metrics = tmp_path / "hyp.txt", tmp_path / "metrics.json"
    result = run_main("translate.py", "--model", trained_toy, "--input", f"{toy_data}/test.src",
                        "--output", str(output), "--reference", f"{toy_data}/test.tgt", "--metrics", str(metrics))
    assert result.returncode == 0, result.stderr
    assert len(output.read_text().splitlines()) == 200
    bleu = [line for line in result.stderr.splitlines() if line.startswith("BLEU|")]
    chrf = [line for line in result.stderr.splitlines() if line.startswith("chrF2|")]
    assert len(bleu) == 1 and "tok:13a" in bleu[0] and "version:" in bleu[0]
    assert len(chrf) == 1
    assert float(bleu[0].split(" = ")[1].split()[0]) > 90
    # The same figures as data, for programs.
    figures = json.loads(metrics.read_text())
    assert figures["lines"] == 200 and figures["beam_size"] == 5 and figures["lines_per_sec"] > 0
    assert figures["bleu"] == pytest.approx(float(bleu[0].split(" = ")[1].split()[0]), abs=0.01)
    assert figures["signatures"] == bleu + chrf and figures["chrf"] > 0


def test_translate_n_best_format(trained_toy):
    result = run_main("translate.py", "--model", trained_toy, "--beam-size", "3", "--n-best", "2",
                        stdin="s1 s2 s3\n\ns4 s5 s6\n")
    assert result.returncode == 0, result.stderr
    rows = [line.split(" ||| ") for line in result.stdout.splitlines()]
    assert [int(r[0]) for r in rows] == [0, 0, 1, 2, 2]  # an empty line has one empty hypothesis
    assert rows[0][1] == " ".join(toy.translate(["s1", "s2", "s3"])) and rows[2][1] == ""
    assert float(rows[0][2]) >= float(rows[1][2])


@pytest.mark.parametrize("args, fragment", [
    (["--beam-size", "0"], "--beam-size must be positive"),
    (["--beam-size", "2", "--n-best", "3"], "--n-best must be between 1 and the beam size (2)"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--length-penalty", "-0.5"], "--length-penalty must be non-negative"),
    (["--metrics", "/nonexistent-dir/metrics.json"], "/nonexistent-dir/metrics.json: cannot write"),
])
def test_translate_bad_options(trained_toy, args, fragment):
    assert_one_line_error(run_main("translate.py", "--model", trained_toy, *args, stdin="s1\n"), fragment)


def test_translate_length_penalty_option_changes_the_scores(trained_toy):
    def best_score(alpha):
        result = run_main("translate.py", "--model", trained_toy, "--n-best", "1", "--length-penalty", alpha,
                            stdin="s1 s2 s3 s4 s5 s6\n")
        assert result.returncode == 0, result.stderr
        return float(result.stdout.split(" ||| ")[2])

    # 7 tokens with EOS: lp = (12/6)^α, the log-probability (negative) is divided by it.
    assert best_score("1.0") == pytest.approx(best_score("0") / 2.0, abs=2e-4)


def test_translate_alignments_and_attention_plots(trained_toy, tmp_path):
    plots = tmp_path / "plots"
    result = run_main("translate.py", "--model", trained_toy, "--beam-size", "2", "--alignments",
                        "--plot-attention", str(plots), stdin="s1 s2 s3 s4\n\ns5 s6 s7\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    text, links = lines[0].split(" ||| ")
    assert text == " ".join(toy.translate(["s1", "s2", "s3", "s4"]))
    # The toy task reverses the words: output word j attends to source word 3 - j.
    assert links == "3-0 2-1 1-2 0-3"
    assert lines[1] == " ||| "
    assert sorted(p.name for p in plots.iterdir()) == ["0.png", "2.png"]
    assert (plots / "0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_saves_a_checkpoint_and_a_rerun_resumes(toy_data, tmp_path, signal_name):
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT
    from seq2seq.runtime import find_jemalloc

    values = toy_config(toy_data, **{"training.max_steps": 100000, "training.validate_every": 100000,
                                     "training.log_every": 20})
    config, model_dir = write_yaml(tmp_path / "c.yaml", values), tmp_path / "m"
    # The command starts again on jemalloc where it is installed: the signal reaches that process.
    env = {name: value for name, value in os.environ.items() if name not in ("LD_PRELOAD", "SEQ2SEQ_ALLOCATOR")}
    process = subprocess.Popen([sys.executable, f"{ROOT}/train.py", "--config", config, "--model-dir",
                                str(model_dir)], stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    log = model_dir / "train.log"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.exists() and "step 20/" in log.read_text()):
        time.sleep(0.5)
    signum = getattr(signal, signal_name)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    allocator = "jemalloc" if find_jemalloc() else "the C library's malloc"
    assert f"memory allocator: {allocator}" in log.read_text()
    stopped = int(log.read_text().split(f"stopped by signal {int(signum)} at step ")[1].split(";")[0])
    assert stopped >= 20
    result = run_script("train.py", "--config", config, "--model-dir", str(model_dir), "--set",
                        f"training.max_steps={stopped + 10}")
    assert result.returncode == 0, result.stderr
    assert f"at step {stopped} " in log.read_text().split("resumed from")[1].splitlines()[0]
    assert f"training done at step {stopped + 10};" in log.read_text()


def _make_dry_run(*args):
    result = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_install_gpu_asks_pip_for_both_extras():
    assert 'pip install --quiet -e ".[test,gpu]"' in _make_dry_run("-B", "install", "GPU=1")
    assert 'pip install --quiet -e ".[test]"' in _make_dry_run("-B", "install")


@pytest.mark.parametrize("config, source, target", [("multi30k_de_en", "de", "en"), ("multi30k_en_de", "en", "de"),
                                                    ("multi30k_en_fr", "en", "fr"), ("multi30k_fr_en", "fr", "en"),
                                                    ("bench_gru256", "de", "en")])
def test_make_translate_takes_the_languages_from_the_configs_data_files(config, source, target):
    assert sorted(os.listdir(os.path.join(ROOT, "configs"))) == [
        "bench_gru256.yaml", "multi30k_de_en.yaml", "multi30k_en_de.yaml", "multi30k_en_fr.yaml",
        "multi30k_fr_en.yaml"]  # every shipped config
    commands = _make_dry_run("translate", f"CONFIG=configs/{config}.yaml").replace("\\\n", " ")
    line = next(line for line in commands.splitlines() if "translate.py" in line)
    assert f"--input data/multi30k/test_2016_flickr.{source} " in line
    assert f"--output runs/{config}/test_2016_flickr.{target}.hyp " in line
    assert f"--reference data/multi30k/test_2016_flickr.{target}" in line


def test_an_unexpected_exception_is_one_error_line_and_its_traceback_goes_to_the_log(tmp_path, capsys):
    import logging

    from seq2seq.errors import run_cli
    from seq2seq.reporting import log, setup_logging

    def fails(argv):
        raise RuntimeError("{{function_node __wrapped__Op_device_/job:worker}} it broke\nmore detail")

    setup_logging(str(tmp_path / "train.log"))
    try:
        assert run_cli(fails, []) == 1
    finally:
        setup_logging()
    err = capsys.readouterr().err
    assert err == f"error: RuntimeError: it broke (traceback in {tmp_path / 'train.log'})\n"
    logged = (tmp_path / "train.log").read_text(encoding="utf-8")
    assert "Traceback (most recent call last)" in logged and "more detail" in logged
    # Without a log file, the traceback goes to a file of its own.
    assert not any(isinstance(h, logging.FileHandler) for h in log.handlers)
    assert run_cli(fails, []) == 1
    path = capsys.readouterr().err.rsplit("(traceback in ", 1)[1].rstrip(")\n")
    with open(path, encoding="utf-8") as f:
        assert "RuntimeError" in f.read()
    os.remove(path)


def test_the_seq2seq_command_dispatches_to_each_command_line(tmp_path, capsys):
    from seq2seq import cli
    from seq2seq.errors import run_cli

    assert run_cli(cli.main, ["translate", "--model", str(tmp_path / "missing")]) != 0
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing'}: model directory not found"
    assert run_cli(cli.main, ["export", "--model", str(tmp_path), "--output", str(tmp_path), "--beam-size", "0"]) != 0
    assert "--beam-size must be positive" in capsys.readouterr().err
    assert run_cli(cli.main, ["train", "--config", str(tmp_path / "none.yaml")]) != 0
    assert "none.yaml" in capsys.readouterr().err
    assert run_cli(cli.main, ["bench", "--repeats", "0"]) != 0
    assert "--repeats must be positive" in capsys.readouterr().err
    assert run_cli(cli.main, ["serve", "--model", str(tmp_path), "--max-chars", "0"]) != 0
    assert "--max-chars must be positive" in capsys.readouterr().err
    assert run_cli(cli.main, ["nonsense"]) != 0
    assert capsys.readouterr().err.startswith("error: usage: seq2seq {train,translate,export,serve,bench}")
    assert run_cli(cli.main, ["--help"]) == 0 and "usage: seq2seq" in capsys.readouterr().out


def test_the_commands_import_keras_without_pyplot_and_plots_still_draw(tmp_path):
    # Keras imports matplotlib.pyplot when it is imported, if it can; the commands' import hides it.
    code = ("import sys; from seq2seq.runtime import import_tensorflow; import_tensorflow(); "
            "assert 'keras' in sys.modules and 'matplotlib.pyplot' not in sys.modules; "
            "from seq2seq.plots import plt; plt.plot([1, 2], [3, 4]); "
            f"plt.savefig({str(tmp_path / 'curves.png')!r}); print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_translate_gives_each_search_in_flight_its_share_of_the_cores(trained_toy, toy_data, tmp_path):
    # A new process, without the suite's TF_NUM_INTRAOP_THREADS: two searches at once get one
    # intra-op thread each on 2 cores (more contend for the same cores), half the cores on more.
    metrics = tmp_path / "metrics.json"
    env = {k: v for k, v in os.environ.items() if k != "TF_NUM_INTRAOP_THREADS"}
    result = subprocess.run([sys.executable, "translate.py", "--model", trained_toy, "--input", f"{toy_data}/test.src",
                             "--output", str(tmp_path / "hyp.txt"), "--metrics", str(metrics), "--verbose"],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    figures = json.loads(metrics.read_text())
    assert figures["searches_at_once"] == 2 and figures["intra_op_threads"] == threads
    assert f"2 searches at once, {threads} intra-op thread(s) each" in result.stderr
