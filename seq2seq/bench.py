"""Speed and quality benchmarks: prints a table and writes the figures as JSON.

    python -m seq2seq.bench [--quick] [--output bench.json] [--model DIR] [--repeats N]
    python -m seq2seq.bench --quality [--output quality.json]
    python -m seq2seq.bench --profile [--quick] [--output profile.json]
    python -m seq2seq.bench --peer joeynmt [--repeats N] [--output peer.json]
    python -m seq2seq.bench --serve --model DIR [--requests N] [--clients N] [--time-limit S] [--output serve.json]

Speed (the default) measures, each in its own process (so that its peak memory is its own):

- training: ``train.py`` on the reference config (``configs/bench_gru256.yaml``) for a few
  hundred steps; target tokens per second is the median of the log intervals after the first
  ``WARMUP_STEPS`` steps (tracing, first batches), as the model directory's ``training.jsonl``
  records them; the same for the shipped de→en config (``configs/multi30k_de_en.yaml``); for
  both, the share of the machine's float32 peak (a 2048³ matmul) that the model's matrix
  products reach at that rate (``seq2seq/flops.py``);
- translation: ``translate.py --metrics`` on test_2016_flickr de→en (1,000 lines), greedy and
  beam 5, default batch size; sentences per second after start-up (model loaded, search
  compiled), and wall time including start-up, also for 4,000 lines (the test set 4 times);
- the SavedModel (``python -m seq2seq.export``) translating the same lines with beam 5, in
  batches of the same size sorted by length, two in flight, like ``translate.py``, after one
  warm-up batch.

Translation needs a trained de→en model: ``--model`` (default ``runs/bench_gru256``, trained
with the reference config first if it has no checkpoint). ``--quick`` (about 6 minutes) uses
instead the model its short training run leaves, and runs everything once.

Quality (``--quality``) trains each shipped config if its model directory has no finished
run (``train.py`` resumes, so a finished run costs nothing), translates test_2016_flickr with
the config's beam size and prints BLEU and chrF with sacreBLEU's signatures; then the same for
an ensemble of 4 seeds of the de→en config (see ``seq2seq/quality.py``).

Side by side (``--peer joeynmt``) trains and translates with this toolkit and JoeyNMT in
turns on the same machine (see ``seq2seq/peer.py``).

Profile (``--profile``) times the parts of the reference config's training step, and, with a
trained ``--model``, where a beam-5 search's time goes (see ``seq2seq/profiling.py``).

Serving (``--serve``) load-tests ``seq2seq serve`` on 127.0.0.1 with dynamic batching and with
batches of one sentence, every answer checked against ``translate.py`` (see ``seq2seq/loadtest.py``).
"""

import argparse
import concurrent.futures
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_CONFIG = "configs/bench_gru256.yaml"
SHIPPED_CONFIG = "configs/multi30k_de_en.yaml"
TEST_SOURCE, TEST_TARGET = "data/multi30k/test_2016_flickr.de", "data/multi30k/test_2016_flickr.en"
WARMUP_STEPS = 100
BATCH_SIZE = 64



def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m seq2seq.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run of about 6 minutes, each figure measured once")
    parser.add_argument("--quality", action="store_true", help="BLEU and chrF of the shipped configs instead")
    parser.add_argument("--profile", action="store_true",
                        help="where a training step's time goes (and a beam search's, with a trained --model) instead")
    parser.add_argument("--peer", choices=["joeynmt"], help="this toolkit and JoeyNMT side by side instead")
    parser.add_argument("--serve", action="store_true", help="load test of seq2seq serve on --model instead")
    parser.add_argument("--requests", type=int, help="--serve: requests of 1-8 sentences (default 2000)")
    parser.add_argument("--clients", type=int, help="--serve: concurrent clients (default 32)")
    parser.add_argument("--time-limit", type=float, help="--serve: seconds at most per server run (default 300)")
    parser.add_argument("--output", help="write the figures to this JSON file")
    parser.add_argument("--model", default="runs/bench_gru256",
                        help="trained de→en model for the translation figures (default runs/bench_gru256)")
    parser.add_argument("--repeats", type=int, help="runs of each translation figure (default 3, 1 with --quick)")
    parser.add_argument("--train-steps", type=int, help="steps of the training figure (default 1000, 300 with --quick)")
    parser.add_argument("--savedmodel-worker", nargs=3, metavar=("EXPORT", "INPUT", "OUTPUT"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def log(message):
    print(message, file=sys.stderr, flush=True)


def run_measured(command):
    """Runs ``command`` (a list) from the repository root; returns (stdout, stderr, wall seconds,
    peak RSS in MB of that process). A failure is raised with its stderr."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace")
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit status {code}:\n{stderr[-3000:]}")
    return stdout, stderr, wall, usage.ru_maxrss / 1024.0


def cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def has_checkpoint(model_dir):
    return any(os.path.isfile(os.path.join(model_dir, folder, "checkpoint")) for folder in ("best", "checkpoints"))


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def steady_rates(model_dir):
    """The target tokens/s of the training history's log lines after ``WARMUP_STEPS``."""
    from seq2seq.model_dir import TRAINING_HISTORY, read_history

    return [r["target_tokens_per_sec"] for r in read_history(model_dir, TRAINING_HISTORY) if r["step"] > WARMUP_STEPS]


def median(values):
    return round(statistics.median(values), 1)


class SpeedBench:
    def __init__(self, args, work):
        self.args, self.work = args, work
        self.repeats = args.repeats or (1 if args.quick else 3)
        self.train_steps = args.train_steps or (300 if args.quick else 1000)
        self.python = sys.executable
        self.results, self.commands = {}, []

    def log(self, message):
        log(message)

    def command(self, *args):
        self.commands.append(" ".join(args))
        return [self.python, *args]

    def training(self, config=REFERENCE_CONFIG, key="train"):
        """Trains ``config`` for the training figure's steps; records its steady target tokens/s
        (``{key}_target_tokens_per_sec``) and the share of the float32 peak that this is."""
        from seq2seq.flops import model_dir_flops

        model_dir = os.path.join(self.work, key)
        self.log(f"training figure: {config}, {self.train_steps} steps")
        _, _, wall, rss = run_measured(self.command(
            "train.py", "--config", config, "--model-dir", model_dir,
            "--set", f"training.max_steps={self.train_steps}", "--set", "training.validate_every=1000000",
            "--set", "training.log_every=50"))
        rates = steady_rates(model_dir)
        if not rates:
            raise RuntimeError(f"no training figures after step {WARMUP_STEPS} in {model_dir}/training.jsonl")
        flops = model_dir_flops(model_dir)
        gflops = median(rates) * flops / 1e9
        self.results.update({f"{key}_target_tokens_per_sec": median(rates), f"{key}_peak_rss_mb": round(rss),
                             f"{key}_steps": self.train_steps, f"{key}_wall_sec": round(wall, 1),
                             f"{key}_mflop_per_target_token": round(flops / 1e6, 2),
                             f"{key}_gflops": round(gflops, 1),
                             f"{key}_share_of_peak": round(gflops / self.results["matmul_peak_gflops"], 3)})
        return model_dir

    def trained_model(self, quick_model):
        if self.args.quick:
            return quick_model
        model_dir = self.args.model
        if not has_checkpoint(model_dir):
            self.log(f"{model_dir} has no trained model: training {REFERENCE_CONFIG} into it (this takes a while)")
            run_measured(self.command("train.py", "--config", REFERENCE_CONFIG, "--model-dir", model_dir))
        return model_dir

    def translation(self, model_dir):
        four_thousand = os.path.join(self.work, "test_4000.de")
        with open(os.path.join(ROOT, TEST_SOURCE), encoding="utf-8") as f:
            lines = f.read()
        with open(four_thousand, "w", encoding="utf-8") as f:
            f.write(lines * 4)
        rss = []
        for beam, name in ((1, "greedy"), (5, "beam5")):
            speeds, walls = [], []
            for _ in range(self.repeats):
                self.log(f"translation figure: beam {beam}")
                metrics = os.path.join(self.work, f"metrics.{name}.json")
                _, _, wall, peak = run_measured(self.command(
                    "translate.py", "--model", model_dir, "--input", TEST_SOURCE, "--reference", TEST_TARGET,
                    "--output", os.path.join(self.work, f"hyp.{name}"), "--beam-size", str(beam),
                    "--metrics", metrics))
                figures = read_json(metrics)
                speeds.append(figures["lines_per_sec"])
                walls.append(wall)
                rss.append(peak)
            self.results[f"translate_{name}_sentences_per_sec"] = median(speeds)
            self.results[f"translate_{name}_wall_sec"] = median(walls)
            self.results[f"translate_{name}_bleu"] = figures["bleu"]
        walls = []
        for _ in range(self.repeats):
            self.log("translation figure: 4,000 lines, beam 5")
            _, _, wall, peak = run_measured(self.command(
                "translate.py", "--model", model_dir, "--input", four_thousand,
                "--output", os.path.join(self.work, "hyp.4000"), "--beam-size", "5"))
            walls.append(wall)
            rss.append(peak)
        self.results["translate_beam5_4000_lines_wall_sec"] = median(walls)
        self.results["translate_peak_rss_mb"] = round(max(rss))

    def savedmodel(self, model_dir):
        export_dir = os.path.join(self.work, "export")
        self.log("SavedModel figure: export")
        run_measured(self.command("-m", "seq2seq.export", "--model", model_dir, "--output", export_dir,
                                  "--beam-size", "5", "--overwrite"))
        speeds = []
        for _ in range(self.repeats):
            self.log("SavedModel figure: beam 5")
            result = os.path.join(self.work, "savedmodel.json")
            run_measured(self.command("-m", "seq2seq.bench", "--savedmodel-worker", os.path.join(export_dir, "1"),
                                      TEST_SOURCE, result))
            with open(result, encoding="utf-8") as f:
                speeds.append(json.load(f)["sentences_per_sec"])
        self.results["savedmodel_beam5_sentences_per_sec"] = median(speeds)

    def run(self):
        import tensorflow as tf

        self.results.update(quick=self.args.quick, config=REFERENCE_CONFIG, repeats=self.repeats,
                            tensorflow_version=tf.__version__, cpu_model=cpu_model(),
                            cpu_cores=len(os.sched_getaffinity(0)))
        from seq2seq.flops import matmul_peak

        self.log("float32 peak: 2048³ matmul")
        self.results["matmul_peak_gflops"] = round(matmul_peak(), 1)
        quick_model = self.training()
        self.training(SHIPPED_CONFIG, "shipped_train")
        model_dir = self.trained_model(quick_model)
        self.results["model"] = model_dir
        self.translation(model_dir)
        self.savedmodel(model_dir)
        self.results["commands"] = self.commands
        return self.results


def savedmodel_worker(export_dir, input_path, output_path):
    """Times the SavedModel on the lines of ``input_path`` (beam size fixed at export) using only
    tensorflow and tensorflow_text, as a consumer would; writes JSON to ``output_path``."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401

    from seq2seq.translate import PARALLEL_BATCHES

    translate = tf.saved_model.load(export_dir).signatures["serving_default"]
    with open(input_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    order = sorted(range(len(lines)), key=lambda i: len(lines[i]))
    translate(text=tf.constant(lines[:BATCH_SIZE]))  # warm-up: first-call set-up
    started = time.perf_counter()
    outputs = [None] * len(lines)
    batches = [order[start:start + BATCH_SIZE] for start in range(0, len(order), BATCH_SIZE)]
    # Two batches in flight, as translate.py and `seq2seq serve` search them.
    with concurrent.futures.ThreadPoolExecutor(PARALLEL_BATCHES) as pool:
        results = pool.map(lambda batch: translate(text=tf.constant([lines[i] for i in batch]))["translation"].numpy(),
                           batches)
        for batch, result in zip(batches, results):
            for i, text in zip(batch, result):
                outputs[i] = text.decode("utf-8")
    seconds = time.perf_counter() - started
    with open(output_path, "w", encoding="utf-8") as f:
        json.dump({"lines": len(lines), "seconds": seconds, "sentences_per_sec": len(lines) / seconds}, f)


SPEED_ROWS = (
    ("training, target tokens/s (reference config, steady state)", "train_target_tokens_per_sec"),
    ("training, peak RSS (MB)", "train_peak_rss_mb"),
    ("training, MFLOP a target token (matrix products, forward and backward)", "train_mflop_per_target_token"),
    ("float32 peak, GFLOP/s (2048³ matmul, default threads)", "matmul_peak_gflops"),
    ("training, share of the float32 peak (reference config)", "train_share_of_peak"),
    ("training, target tokens/s (shipped de→en config, steady state)", "shipped_train_target_tokens_per_sec"),
    ("training, share of the float32 peak (shipped de→en config)", "shipped_train_share_of_peak"),
    ("greedy translation, sentences/s (after start-up)", "translate_greedy_sentences_per_sec"),
    ("beam-5 translation, sentences/s (after start-up)", "translate_beam5_sentences_per_sec"),
    ("beam-5 translate.py, 1,000 lines, wall s (start-up included)", "translate_beam5_wall_sec"),
    ("beam-5 translate.py, 4,000 lines, wall s (start-up included)", "translate_beam5_4000_lines_wall_sec"),
    ("SavedModel beam-5 translation, sentences/s", "savedmodel_beam5_sentences_per_sec"),
    ("translation, peak RSS (MB)", "translate_peak_rss_mb"),
    ("greedy BLEU (test_2016_flickr)", "translate_greedy_bleu"),
    ("beam-5 BLEU (test_2016_flickr)", "translate_beam5_bleu"),
)


def print_speed_table(results):
    print(f"TensorFlow {results['tensorflow_version']}, {results['cpu_model']}, {results['cpu_cores']} cores; "
          f"model {results['model']}{' (--quick)' if results['quick'] else ''}")
    width = max(len(label) for label, _ in SPEED_ROWS)
    print(f"| {'figure'.ljust(width)} | value |\n| {'-' * width} | ----- |")
    for label, key in SPEED_ROWS:
        print(f"| {label.ljust(width)} | {results[key]:,} |")


def main(argv=None):
    args = parse_args(argv)
    if args.savedmodel_worker:
        savedmodel_worker(*args.savedmodel_worker)
        return 0
    from seq2seq.cli import require
    from seq2seq.errors import UserError

    require(args, positive=("repeats",))
    if args.train_steps is not None and args.train_steps <= WARMUP_STEPS:
        raise UserError(f"--train-steps must be more than the {WARMUP_STEPS} warm-up steps, got {args.train_steps}")
    if args.serve:
        from seq2seq.loadtest import check

        check(args)
    for path in (REFERENCE_CONFIG, TEST_SOURCE, TEST_TARGET):
        if not os.path.isfile(os.path.join(ROOT, path)):
            raise UserError(f"{path}: not found (run `make data` first)")

    if args.serve:
        from seq2seq.loadtest import load_test, print_table

        results = load_test(args, ROOT, TEST_SOURCE, log)
        print_table(results)
    elif args.quality:
        from seq2seq.quality import quality

        results = quality(log)
    elif args.peer:
        from seq2seq.peer import peer_bench

        results = peer_bench(args.repeats or 3, log)
    elif args.profile:
        from seq2seq.profiling import print_profile, print_search_profile, profile_search, profile_step
        from seq2seq.runtime import import_tensorflow

        import_tensorflow()
        with contextlib.chdir(ROOT), tempfile.TemporaryDirectory(prefix="seq2seq-profile-") as work:
            results = profile_step(work, REFERENCE_CONFIG, num_batches=20 if args.quick else 40,
                                   repeats=1 if args.quick else 7, log=log)
            if has_checkpoint(os.path.join(ROOT, args.model)):
                with open(os.path.join(ROOT, TEST_SOURCE), encoding="utf-8") as f:
                    lines = f.read().splitlines()
                results["search"] = profile_search(os.path.join(ROOT, args.model), lines[:256] if args.quick else lines,
                                                   log=log)
            else:
                log(f"profile: {args.model} has no trained model, so no beam search profile (--model DIR)")
        print_profile(results)
        if "search" in results:
            print_search_profile(results["search"])
    else:
        from seq2seq.runtime import import_tensorflow

        import_tensorflow()
        with tempfile.TemporaryDirectory(prefix="seq2seq-bench-") as work:
            results = SpeedBench(args, work).run()
        print_speed_table(results)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2, ensure_ascii=False)
            f.write("\n")
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    from seq2seq.errors import run_cli

    sys.exit(run_cli(main))
