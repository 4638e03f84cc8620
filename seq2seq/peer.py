"""This toolkit and JoeyNMT side by side on one machine: ``python -m seq2seq.bench --peer joeynmt``.

Sets up JoeyNMT 2.3.0 (PyTorch on the CPU) in its own virtual environment, then, in turns
(ours, JoeyNMT, ours, ...) ``--repeats`` times each:

- trains one epoch of Multi30k de→en from an empty model directory with the reference
  architecture (``configs/bench_gru256.yaml``: bi-GRU-256 encoder, GRU-256 decoder with
  input feeding and Bahdanau attention, embeddings 256, dropout 0.3, about 64 sentences a
  batch, Adam 0.001, clipping 1.0) on the same joint SentencePiece model (ours trains it, as
  from an empty directory; JoeyNMT is given it). Figures: the wall clock of the command, and
  the steady-state target tokens/s, the median of the rates after the first ``WARMUP_STEPS``
  steps (ours from the model directory's ``training.jsonl``, JoeyNMT's from its log; both
  count real target tokens, without padding);
- translates 4,000 lines (test_2016_flickr de ×4) with beam 5, length penalty α = 1, batches
  of 64 sentences, each with the model it trained: the wall clock with start-up, the words of
  the output and the output words per second. After one epoch the two models do not write the
  same amount of text (a model that still repeats phrases searches more steps), so the
  per-word rate is printed beside the wall clock.

It prints the medians, the ratios and the CPU (model and the vector-instruction flags that
matter); ``--output`` writes them as JSON.
"""

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from seq2seq import vocabulary
from seq2seq.bench import WARMUP_STEPS, steady_rates
from seq2seq.model_dir import read_history

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_CONFIG = "configs/bench_gru256.yaml"
DATA = "data/multi30k"
TEST_SOURCE = f"{DATA}/test_2016_flickr.de"
JOEYNMT_VENV = os.environ.get("JOEY_VENV", os.path.join(ROOT, "runs", "peer", "joeynmt-venv"))
JOEYNMT_PACKAGES = ("torch==2.13.0", "joeynmt==2.3.0", "sentencepiece==0.1.99", "importlib_metadata==10.2.0")
BATCH_SENTENCES = 64
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")

_JOEY_RATE = re.compile(r"Epoch\s+\d+, Step:\s+(\d+), .*Tokens per Sec:\s+(\d+)")

# JoeyNMT's config for the reference architecture (as ../shared/tools/peer_joey.sh of the project's
# workspace runs it): one epoch, no validation; the final weights are saved as latest.ckpt.
JOEYNMT_CONFIG = """\
name: peer
joeynmt_version: "2.3.0"
model_dir: "{work}/model"
use_cuda: False
fp16: False
random_seed: 42
data:
    train: "{data}/train"
    dev: "{data}/val"
    test: "{data}/test_2016_flickr"
    dataset_type: "plain"
    src: {{lang: "de", max_length: 100, min_length: 1, lowercase: False, normalize: False, level: "bpe",
           voc_file: "{vocab}", tokenizer_type: "sentencepiece", tokenizer_cfg: {{model_file: "{spm}"}}}}
    trg: {{lang: "en", max_length: 100, min_length: 1, lowercase: False, normalize: False, level: "bpe",
           voc_file: "{trg_vocab}", tokenizer_type: "sentencepiece", tokenizer_cfg: {{model_file: "{spm}"}}}}
    special_symbols: {{unk_token: "<unk>", pad_token: "<pad>", bos_token: "<s>", eos_token: "</s>",
                       unk_id: 0, pad_id: 1, bos_id: 2, eos_id: 3}}
testing: {{n_best: 1, beam_size: 5, beam_alpha: 1.0, batch_size: {batch}, batch_type: "sentence",
          eval_metrics: ["bleu"], max_output_length: -1, sacrebleu_cfg: {{tokenize: "13a"}}}}
training:
    optimizer: "adam"
    learning_rate: 0.001
    clip_grad_norm: 1.0
    loss: "crossentropy"
    batch_size: {batch}
    batch_type: "sentence"
    normalization: "tokens"
    scheduling: "exponential"
    decrease_factor: 1.0
    epochs: 1
    updates: 1000000
    validation_freq: 1000000
    logging_freq: 50
    early_stopping_metric: "bleu"
    overwrite: True
    shuffle: True
model:
    initializer: "xavier_uniform"
    embed_initializer: "normal"
    embed_init_weight: 0.1
    bias_initializer: "zeros"
    encoder: {{type: "recurrent", rnn_type: "gru", embeddings: {{embedding_dim: 256, scale: False}},
               hidden_size: 256, bidirectional: True, dropout: 0.3, num_layers: 1}}
    decoder: {{type: "recurrent", rnn_type: "gru", embeddings: {{embedding_dim: 256, scale: False}},
               emb_scale: False, hidden_size: 256, dropout: 0.3, hidden_dropout: 0.3, num_layers: 1,
               input_feeding: True, init_hidden: "bridge", attention: "bahdanau"}}
"""


def joeynmt_vocabularies(spm, work):
    """JoeyNMT's source and target vocabulary files, written into ``work``, for our SentencePiece
    model ``spm`` (DIR/spm.model): its pieces with JoeyNMT's special ones first, and for the
    target side the pieces our output layer scores (DIR/output_vocabulary.txt, where our config
    sets model.output_vocabulary: observed), so that both output layers have the same size.
    Returns the two paths (the same one twice without an output vocabulary file)."""
    special = ["<unk>", "<pad>", "<s>", "</s>"]

    def write(path, pieces):
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(special + [p for p in pieces if p not in special]) + "\n")
        return path

    with open(spm[: -len(".model")] + ".vocab", encoding="utf-8") as f:
        pieces = [line.split("\t")[0] for line in f]  # line i: the piece of id i
    vocab = write(os.path.join(work, "vocab.txt"), pieces)
    output_vocabulary = vocabulary.path(os.path.dirname(spm))
    if not os.path.isfile(output_vocabulary):
        return vocab, vocab
    ids = vocabulary.read(output_vocabulary, len(pieces))
    return vocab, write(os.path.join(work, "trg_vocab.txt"), [pieces[i] for i in ids])


def cpu():
    """The CPU's model name and which of ``CPU_FLAGS`` it has, from /proc/cpuinfo."""
    model, flags = "unknown CPU", set()
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    return {"model": model, "cores": len(os.sched_getaffinity(0)), "flags": [f for f in CPU_FLAGS if f in flags]}


def _run(command, log_path, stdin=None, stdout=None):
    """Runs ``command`` from the repository root with stderr (and stdout, unless given) into
    ``log_path``; returns the wall seconds. A failure is raised with the log's end."""
    started = time.perf_counter()
    with open(log_path, "wb") as log_file:
        result = subprocess.run(command, cwd=ROOT, stdin=stdin, stdout=stdout or log_file, stderr=log_file)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            raise RuntimeError(f"{' '.join(command)} failed with exit status {result.returncode}:\n{f.read()[-3000:]}")
    return wall


def _steady_rate(pattern, log_path):
    with open(log_path, encoding="utf-8", errors="replace") as f:
        rates = [int(rate.replace(",", "")) for step, rate in pattern.findall(f.read()) if int(step) > WARMUP_STEPS]
    if not rates:
        raise RuntimeError(f"{log_path}: no training rate logged after step {WARMUP_STEPS}")
    return statistics.median(rates)


def _steps(pattern, log_path):
    with open(log_path, encoding="utf-8", errors="replace") as f:
        return max(int(step) for step, _ in pattern.findall(f.read()))


def _words(path):
    with open(path, encoding="utf-8") as f:
        return sum(len(line.split()) for line in f)


def install_joeynmt(log):
    """Creates JoeyNMT's virtual environment unless it is there; returns its python."""
    python = os.path.join(JOEYNMT_VENV, "bin", "python")
    if os.path.isfile(python) and subprocess.run([python, "-c", "import joeynmt"], capture_output=True).returncode == 0:
        return python
    log(f"setting up JoeyNMT in {JOEYNMT_VENV} ({', '.join(JOEYNMT_PACKAGES)})")
    subprocess.run([sys.executable, "-m", "venv", JOEYNMT_VENV], check=True)
    subprocess.run([python, "-m", "pip", "install", "--quiet", *JOEYNMT_PACKAGES], check=True)
    return python


class PeerBench:
    """Trains and translates with both toolkits in turns; ``run()`` returns the figures."""

    def __init__(self, repeats, work, log):
        self.repeats, self.work, self.log = repeats, work, log
        self.joey_python = install_joeynmt(log)
        self.figures = {"ours": [], "joeynmt": []}
        self.test_4000 = os.path.join(work, "test_4000.de")
        with open(os.path.join(ROOT, TEST_SOURCE), encoding="utf-8") as f:
            lines = f.read()
        with open(self.test_4000, "w", encoding="utf-8") as f:
            f.write(lines * 4)
        self.spm = None  # our first run's SentencePiece model, which JoeyNMT is given

    def ours(self, run):
        model_dir = os.path.join(self.work, f"ours{run}")
        self.log(f"run {run + 1}/{self.repeats}: this toolkit, one epoch of {REFERENCE_CONFIG}")
        train_log = os.path.join(self.work, f"ours{run}.train.log")
        train_wall = _run([sys.executable, "train.py", "--config", REFERENCE_CONFIG, "--model-dir", model_dir,
                           "--set", "training.epochs=1", "--set", "training.validate_every=1000000",
                           "--set", "training.log_every=50"], train_log)
        if self.spm is None:
            self.spm = os.path.join(model_dir, "spm.model")
        self.log(f"run {run + 1}/{self.repeats}: this toolkit, beam 5, 4,000 lines")
        hyp = os.path.join(self.work, f"ours{run}.hyp")
        translate_wall = _run([sys.executable, "translate.py", "--model", model_dir, "--input", self.test_4000,
                               "--output", hyp, "--beam-size", "5", "--length-penalty", "1.0",
                               "--batch-size", str(BATCH_SENTENCES)], os.path.join(self.work, f"ours{run}.log"))
        rates = steady_rates(model_dir)
        if not rates:
            raise RuntimeError(f"{model_dir}: no training figures after step {WARMUP_STEPS}")
        return {"train_tokens_per_sec": statistics.median(rates), "epoch_wall_sec": train_wall,
                "train_steps": read_history(model_dir)[-1]["step"],  # the validation at the epoch's end
                "translate_4000_wall_sec": translate_wall,
                "output_words": _words(hyp)}

    def joeynmt(self, run):
        work = os.path.join(self.work, f"joeynmt{run}")
        os.makedirs(work)
        vocab, trg_vocab = joeynmt_vocabularies(self.spm, work)
        config = os.path.join(work, "config.yaml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(JOEYNMT_CONFIG.format(work=work, data=os.path.join(ROOT, DATA), vocab=vocab, trg_vocab=trg_vocab,
                                          spm=self.spm, batch=BATCH_SENTENCES))
        self.log(f"run {run + 1}/{self.repeats}: JoeyNMT, one epoch")
        train_log = os.path.join(work, "train.log")
        train_wall = _run([self.joey_python, "-m", "joeynmt", "train", config, "--skip-test"], train_log)
        self.log(f"run {run + 1}/{self.repeats}: JoeyNMT, beam 5, 4,000 lines")
        hyp = os.path.join(work, "hyp")
        with open(self.test_4000, "rb") as source, open(hyp, "wb") as out:
            translate_wall = _run([self.joey_python, "-m", "joeynmt", "translate", config],
                                  os.path.join(work, "translate.log"), stdin=source, stdout=out)
        return {"train_tokens_per_sec": _steady_rate(_JOEY_RATE, train_log), "epoch_wall_sec": train_wall,
                "train_steps": _steps(_JOEY_RATE, train_log), "translate_4000_wall_sec": translate_wall,
                "output_words": _words(hyp)}

    def run(self):
        for run in range(self.repeats):
            self.figures["ours"].append(self.ours(run))
            self.figures["joeynmt"].append(self.joeynmt(run))
        return summarize(self.figures)


def summarize(figures):
    """The medians of each toolkit's runs and the speed-ups (JoeyNMT's time over ours)."""
    medians = {name: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
               for name, runs in figures.items()}
    ours, joey = medians["ours"], medians["joeynmt"]
    for m in (ours, joey):  # the decoding work differs with the output's length: also per output word
        m["output_words_per_sec"] = m["output_words"] / m["translate_4000_wall_sec"]
    speedup = {"train_tokens_per_sec": ours["train_tokens_per_sec"] / joey["train_tokens_per_sec"],
               "epoch_wall_sec": joey["epoch_wall_sec"] / ours["epoch_wall_sec"],
               "translate_4000_wall_sec": joey["translate_4000_wall_sec"] / ours["translate_4000_wall_sec"],
               "output_words_per_sec": ours["output_words_per_sec"] / joey["output_words_per_sec"]}
    return {"cpu": cpu(), "repeats": len(figures["ours"]), "runs": figures, "medians": medians, "speedup": speedup}


ROWS = (
    ("training, target tokens/s, steady state", "train_tokens_per_sec", "{:,.0f}"),
    ("training, one epoch from an empty model directory, wall s", "epoch_wall_sec", "{:,.1f}"),
    ("beam 5, 4,000 lines, wall s with start-up", "translate_4000_wall_sec", "{:,.1f}"),
    ("beam 5, output words per wall second (start-up included)", "output_words_per_sec", "{:,.0f}"),
)


def print_table(results):
    info = results["cpu"]
    print(f"{info['model']}, {info['cores']} cores, flags: {' '.join(info['flags']) or 'none of ' + str(CPU_FLAGS)}; "
          f"medians of {results['repeats']} runs in turns")
    print("| figure | this toolkit | JoeyNMT 2.3.0 | speed-up |\n| --- | --- | --- | --- |")
    ours, joey = results["medians"]["ours"], results["medians"]["joeynmt"]
    for label, key, number in ROWS:
        print(f"| {label} | {number.format(ours[key])} | {number.format(joey[key])} | "
              f"{results['speedup'][key]:.2f}× |")
    print(f"| training steps in the epoch (JoeyNMT: the last logged) | {ours['train_steps']:,.0f} | "
          f"{joey['train_steps']:,.0f} | |")
    print(f"| output words, 4,000 lines | {ours['output_words']:,.0f} | {joey['output_words']:,.0f} | |")


def peer_bench(repeats, log):
    with tempfile.TemporaryDirectory(prefix="seq2seq-peer-") as work:
        results = PeerBench(repeats, work, log).run()
    print_table(results)
    return results

