"""SavedModel export: the toy model exported, loaded without this project, same translations."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, assert_one_line_error, build_once, run_main, toy

# Run in a separate interpreter, from a directory outside the repository: it must not need (and
# is checked not to import) the seq2seq package.
CONSUMER = r"""
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401, registers the SentencePiece ops
translate = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
lines = json.load(open(sys.argv[2], encoding="utf-8"))
outputs = translate(text=tf.constant(lines, tf.string))
json.dump({"translation": [t.decode("utf-8") for t in outputs["translation"].numpy()],
           "score": [float(s) for s in outputs["score"].numpy()],
           "seq2seq_imported": any(name.split(".")[0] == "seq2seq" for name in sys.modules)},
          open(sys.argv[3], "w", encoding="utf-8"))
"""


def run_export(*args):
    return subprocess.run([sys.executable, "-m", "seq2seq.export", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


def consume(export_dir, lines, tmp_path):
    """Translates ``lines`` with the SavedModel in a fresh Python process; returns its JSON result."""
    script, inputs, outputs = tmp_path / "consumer.py", tmp_path / "lines.json", tmp_path / "out.json"
    script.write_text(CONSUMER)
    inputs.write_text(json.dumps(lines))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, str(script), export_dir, str(inputs), str(outputs)],
                            capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(outputs.read_text())


@pytest.fixture(scope="session")
def exported(trained_toy, tmp_path_factory):
    def export(output):
        result = run_export("--model", trained_toy, "--output", output, "--beam-size", "3")
        assert result.returncode == 0, result.stderr

    return os.path.join(build_once(tmp_path_factory, "export", export), "1")


def test_export_layout_and_assets(exported):
    assert sorted(os.listdir(exported)) == ["assets", "fingerprint.pb", "saved_model.pb", "variables"]
    assert os.listdir(os.path.join(exported, "assets")) == ["spm.model"]
    assert not [name for name in os.listdir(os.path.dirname(exported)) if name.startswith(".")]  # no staging left


def test_savedmodel_translates_exactly_like_translate_py(exported, trained_toy, toy_data, tmp_path):
    with open(os.path.join(toy_data, "test.src"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    expected = run_main("translate.py", "--model", trained_toy, "--beam-size", "3",
                          "--input", os.path.join(toy_data, "test.src"))
    assert expected.returncode == 0, expected.stderr
    result = consume(exported, lines, tmp_path)
    assert not result["seq2seq_imported"]
    assert result["translation"] == expected.stdout.split("\n")[:-1]
    assert len(result["translation"]) == len(lines) == 200
    # The score is translate.py's --n-best score of the best translation.
    nbest = run_main("translate.py", "--model", trained_toy, "--beam-size", "3", "--n-best", "1",
                       stdin="\n".join(lines[:5]) + "\n")
    scores = [float(line.split(" ||| ")[2]) for line in nbest.stdout.splitlines()]
    assert result["score"][:5] == pytest.approx(scores, abs=1e-3)


def test_savedmodel_empty_blank_and_long_inputs_keep_batch_order(exported, tmp_path):
    long_line = " ".join(f"s{i % 20}" for i in range(700))  # about 2,000 characters
    assert len(long_line) >= 2000
    lines = ["s1 s2 s3", "", "   ", long_line, "s4 s5"]
    result = consume(exported, lines, tmp_path)
    translations, scores = result["translation"], result["score"]
    assert len(translations) == len(lines)
    assert translations[1] == translations[2] == "" and scores[1] == scores[2] == 0.0
    assert translations[0] == " ".join(toy.translate(lines[0].split()))
    assert translations[4] == " ".join(toy.translate(lines[4].split()))
    assert translations[3] and scores[3] < 0


def test_saved_model_cli_show_and_run(exported):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    show = subprocess.run([cli, "show", "--dir", exported, "--tag_set", "serve", "--signature_def",
                           "serving_default"], capture_output=True, text=True, timeout=300)
    assert show.returncode == 0, show.stderr
    for fragment in ("inputs['text']", "DT_STRING", "outputs['translation']", "outputs['score']", "DT_FLOAT"):
        assert fragment in show.stdout
    # `saved_model_cli run` loads the SavedModel the TensorFlow 1 way, like TensorFlow Serving; the
    # tensorflow-text ops must be registered first, so it runs with tensorflow_text imported.
    run = subprocess.run([sys.executable, "-c", "import tensorflow_text; from tensorflow.python.tools import "
                          "saved_model_cli; saved_model_cli.main()", "run", "--dir", exported, "--tag_set", "serve",
                          "--signature_def", "serving_default", "--input_exprs", 'text=["s1 s2 s3", "", "s4"]'],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    expected = [" ".join(toy.translate(["s1", "s2", "s3"])), "", " ".join(toy.translate(["s4"]))]
    assert "Result for output key translation:\n[" + " ".join(f"b'{t}'" for t in expected) + "]" in run.stdout


def test_export_versions_and_overwrite(trained_toy, tmp_path):
    result = run_main("export", "--model", trained_toy, "--output", str(tmp_path), "--version", "7", "--beam-size", "1")
    assert result.returncode == 0, result.stderr
    assert os.path.isfile(tmp_path / "7" / "saved_model.pb")
    result = run_main("export", "--model", trained_toy, "--output", str(tmp_path), "--version", "7")
    assert_one_line_error(result, str(tmp_path / "7"), "already exists", "--overwrite")
    result = run_main("export", "--model", trained_toy, "--output", str(tmp_path), "--version", "7", "--overwrite")
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path)) == ["7"]


def test_export_without_checkpoint_fails_with_one_line(trained_toy, tmp_path):
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    for name in ("config.yaml", "spm.model"):
        (untrained / name).write_bytes(open(os.path.join(trained_toy, name), "rb").read())
    result = run_main("export", "--model", str(untrained), "--output", str(tmp_path / "export"))
    assert_one_line_error(result, "no trained checkpoint")
    assert not os.path.exists(tmp_path / "export" / "1")
    result = run_main("export", "--model", str(tmp_path / "missing"), "--output", str(tmp_path / "export"))
    assert_one_line_error(result, "model directory not found")


@pytest.mark.parametrize("args, fragment", [
    (["--beam-size", "0"], "--beam-size must be positive"),
    (["--version", "-1"], "--version must be"),
    (["--length-penalty", "-1"], "--length-penalty must be non-negative"),
    (["--max-length-ratio", "0"], "--max-length-ratio must be positive"),
])
def test_export_bad_options(trained_toy, tmp_path, args, fragment):
    assert_one_line_error(run_main("export", "--model", trained_toy, "--output", str(tmp_path), *args), fragment)


def test_bench_times_the_savedmodel_like_a_consumer(exported, toy_data, tmp_path):
    output = tmp_path / "speed.json"
    result = subprocess.run([sys.executable, "-m", "seq2seq.bench", "--savedmodel-worker", exported,
                             os.path.join(toy_data, "test.src"), str(output)], capture_output=True, text=True,
                            cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr
    figures = json.loads(output.read_text())
    assert figures["lines"] == 200 and figures["sentences_per_sec"] > 0


@pytest.mark.parametrize("args, fragment", [
    (["--repeats", "0"], "--repeats must be positive"),
    (["--train-steps", "50"], "--train-steps must be more than"),
])
def test_bench_bad_options(args, fragment):
    assert_one_line_error(run_main("bench", *args), fragment)


def load_signatures(export_dir):
    import tensorflow as tf
    import tensorflow_text  # noqa: F401 (registers the SentencePiece ops)

    return tf.saved_model.load(export_dir).signatures


def test_savedmodel_score_signature_gives_translate_py_scores(exported, trained_toy, tmp_path):
    import tensorflow as tf

    sources, targets = ["s1 s2 s3", "s4 s5", "", "s7 s8 s9 s1"], ["T13 T3 T10", "T3 T3", "T1", ""]
    for name, lines in (("src", sources), ("tgt", targets)):
        (tmp_path / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    expected = run_main("translate.py", "--model", trained_toy, "--input", str(tmp_path / "src"),
                        "--score", str(tmp_path / "tgt"))
    assert expected.returncode == 0, expected.stderr
    expected = [[float(x) for x in line.split("\t")] for line in expected.stdout.splitlines()]
    result = load_signatures(exported)["score"](text=tf.constant(sources), translation=tf.constant(targets))
    assert sorted(result) == ["log_prob", "score"]
    got = list(zip(result["log_prob"].numpy().tolist(), result["score"].numpy().tolist()))
    assert len(got) == len(sources)
    for (log_prob, score), (want_log_prob, want_score) in zip(got, expected):
        assert log_prob == pytest.approx(want_log_prob, abs=1e-4) and score == pytest.approx(want_score, abs=1e-4)
    assert min(log_prob for log_prob, _ in got) < -1.0  # the numbers are not all ~0


def test_ensemble_exports_as_one_savedmodel_with_the_same_signatures(exported, trained_toy, tmp_path):
    import tensorflow as tf

    result = run_main("export", "--model", trained_toy, "--model", trained_toy, "--weights", "2", "1",
                      "--output", str(tmp_path), "--beam-size", "3")
    assert result.returncode == 0, result.stderr
    ensemble, alone = load_signatures(str(tmp_path / "1")), load_signatures(exported)
    lines = tf.constant(["s1 s2 s3", "", "s4 s5 s6 s7", "s9"])
    ours, theirs = ensemble["serving_default"](text=lines), alone["serving_default"](text=lines)
    assert ours["translation"].numpy().tolist() == theirs["translation"].numpy().tolist()
    assert ours["translation"].numpy()[0].decode() == " ".join(toy.translate(["s1", "s2", "s3"]))
    assert ours["score"].numpy() == pytest.approx(theirs["score"].numpy(), abs=1e-4)
    translations = tf.constant(["T1 T2", "T3", "", "T5 T6 T7"])
    ours, theirs = ensemble["score"](text=lines, translation=translations), alone["score"](text=lines,
                                                                                         translation=translations)
    assert ours["log_prob"].numpy() == pytest.approx(theirs["log_prob"].numpy(), abs=1e-4)
