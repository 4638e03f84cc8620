"""The command lines: ``seq2seq train|translate|export|serve|bench ...`` (the console command), with
``train.py`` and ``translate.py`` as thin wrappers over the first two.

Every command checks its arguments before TensorFlow loads, with the same validators
(``require``), and reports a bad one as one ``error:`` line.
"""

import argparse
import contextlib
import dataclasses
import gzip
import itertools
import json
import os
import sys
import time

from seq2seq.config import fine_tuning_config, load_config
from seq2seq.corpus import check_data, count_lines, is_gzip, read_lines
from seq2seq.errors import DataError, UserError, run_cli
from seq2seq.model_dir import check_ensemble_weights, check_shared_tokenizers, check_trained, read_model_config
from seq2seq.runtime import exec_with_jemalloc, import_tensorflow, share_cores
from seq2seq.tokenizer import EarlyTraining

TRANSLATE_USAGE = """Translates text with a trained model, one output line per input line, in input order.

    translate.py --model DIR [--model DIR ... [--weights W ...]] [--input PATH|-] [--output PATH|-]
                 [--beam-size N] [--length-penalty A] [--n-best N] [--alignments] [--plot-attention DIR]
                 [--batch-size N] [--reference PATH] [--metrics PATH]
                 [--score TARGET_PATH | --sampling-topk K --sampling-temperature T --seed S]

With --n-best N, each input line gives N lines ``index ||| translation ||| score`` (index from
0, best first). --alignments appends `` ||| i-j ...`` to each translation: for each output
subword j, the source subword i with the highest attention. --plot-attention DIR writes
DIR/<line>.png, a heatmap of each best translation's attention. With --reference, sacrebleu's
BLEU and chrF lines (with signatures) go to stderr. --metrics PATH writes the figures as JSON
(lines, load and translation seconds, lines/s; BLEU, chrF and signatures with --reference).

--model given more than once decodes with the ensemble of the models: the log of their mean
probability (weighted by --weights) extends the hypotheses; the models must share their
SentencePiece models, and the first one's config gives the translate settings. --score
TARGET_PATH scores the given translations instead of searching: one line
``log_prob<TAB>score`` per (input, target) pair, log P(target | input) and the length-normalized
score that --n-best prints. --sampling-topk K (0: the whole distribution) and
--sampling-temperature T draw each token at random instead of searching (--beam-size must be 1);
--n-best N then gives N independent samples; --seed S makes the draws reproducible.
"""

COMMANDS = ("train", "translate", "export", "serve", "bench")


def require(args, positive=(), non_negative=()):
    """Raises UserError naming the first option (by its ``args`` attribute) that is set and out
    of range: ``positive`` ones must be > 0, ``non_negative`` ones >= 0."""
    for names, ok, what in ((positive, lambda v: v > 0, "positive"), (non_negative, lambda v: v >= 0,
                                                                       "non-negative")):
        for name in names:
            value = getattr(args, name)
            if value is not None and not ok(value):
                raise UserError(f"--{name.replace('_', '-')} must be {what}, got {value}")


def train_parser(prog="train.py"):
    parser = argparse.ArgumentParser(prog=prog, description="Trains a translation model.")
    parser.add_argument("--config", required=True, help="YAML experiment config (see configs/)")
    parser.add_argument("--model-dir", help="where to write the model (default: runs/<config name>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config key by its dotted path, e.g. training.max_steps=200")
    parser.add_argument("--init-from", metavar="TRAINED_DIR",
                        help="fine-tune: a new model directory starts from this trained model (its weights, "
                             "SentencePiece model(s), model and tokenizer sections) on the config's data")
    return parser


def train_main(argv=None, prog="train.py"):
    """Trains (or resumes); returns 128 + the signal's number when Ctrl-C or SIGTERM stopped it."""
    args = train_parser(prog).parse_args(argv)
    if args.init_from:
        config = fine_tuning_config(args.config, args.overrides, check_trained(args.init_from), args.init_from)
    else:
        config = load_config(args.config, args.overrides)
    check_data(config.data)
    model_dir = args.model_dir or os.path.join("runs", os.path.splitext(os.path.basename(args.config))[0])
    if args.init_from and os.path.realpath(model_dir) == os.path.realpath(args.init_from):
        raise UserError(f"--model-dir {model_dir}: fine-tuning writes a new model directory, not the one of "
                        "--init-from (choose another --model-dir)")

    # A new model directory's SentencePiece training runs while TensorFlow is imported.
    started = (None if args.init_from or config.training.distribution == "multi_worker" else
               EarlyTraining.start(model_dir, config))
    try:
        import_tensorflow()  # only once the arguments and data are known to be valid
        from seq2seq.training import Trainer

        trainer = Trainer(config, model_dir, args.init_from, started)
        trainer.train()
    finally:
        if started is not None:
            started.cancel()
    if trainer.stop_signal is not None:  # stopped by Ctrl-C or SIGTERM, after saving a checkpoint
        return 128 + trainer.stop_signal


def translate_parser(prog="translate.py"):
    parser = argparse.ArgumentParser(prog=prog, description=TRANSLATE_USAGE.splitlines()[0])
    parser.add_argument("--model", required=True, action="append",
                        help="trained model directory; given more than once, the ensemble of the models")
    parser.add_argument("--weights", type=float, nargs="+", metavar="W",
                        help="the ensemble's weights, one per --model (default: equal)")
    parser.add_argument("--input", default="-", help="source text, one sentence a line (default: stdin)")
    parser.add_argument("--output", default="-", help="where to write translations (default: stdout)")
    parser.add_argument("--beam-size", type=int, default=None,
                        help="beam size (default: translate.beam_size of the model's config); 1 is greedy")
    parser.add_argument("--length-penalty", type=float, default=None, metavar="ALPHA",
                        help="GNMT length penalty α (default: translate.length_penalty of the model's config)")
    parser.add_argument("--n-best", type=int, default=None,
                        help="write the N best translations of each line as 'index ||| translation ||| score'")
    parser.add_argument("--alignments", action="store_true",
                        help="append ' ||| i-j ...' subword alignments (source i, output j) to each translation")
    parser.add_argument("--plot-attention", metavar="DIR", help="write an attention heatmap PNG per line into DIR")
    parser.add_argument("--batch-size", type=int, default=None, help="sentences per batch (default: from config)")
    parser.add_argument("--reference", help="reference translations: print BLEU and chrF to stderr")
    parser.add_argument("--verbose", action="store_true",
                        help="print the start-up and translation times (lines/s) to stderr")
    parser.add_argument("--metrics", metavar="PATH",
                        help="write the figures (lines, times, lines/s; BLEU and chrF with --reference) as JSON")
    parser.add_argument("--score", metavar="TARGET_PATH",
                        help="score the translations in TARGET_PATH (one per input line): 'log_prob<TAB>score'")
    parser.add_argument("--sampling-topk", type=int, metavar="K",
                        help="sample each token from the K most probable ones (0: from all) instead of searching")
    parser.add_argument("--sampling-temperature", type=float, metavar="T",
                        help="sample each token from softmax(logits / T) (default 1 when sampling)")
    parser.add_argument("--seed", type=int, help="random seed of the sampling (default: a fresh one each run)")
    return parser


def _check_decoding_options(args):
    """Checks the combinations of ``translate_main``'s options; reads and returns the models'
    configs (the first one's translate settings apply), before TensorFlow loads."""
    require(args, positive=("batch_size", "beam_size", "sampling_temperature"),
            non_negative=("length_penalty", "sampling_topk", "seed"))
    if args.seed is not None and args.seed >= 1 << 63:
        raise UserError(f"--seed must be below 2**63, got {args.seed}")
    configs = [read_model_config(model_dir) for model_dir in args.model]
    check_shared_tokenizers(args.model, configs)
    check_ensemble_weights(args.weights, args.model)
    sampling = args.sampling_topk is not None or args.sampling_temperature is not None
    if args.score:
        given = [name for name, value in (("--n-best", args.n_best), ("--alignments", args.alignments),
                                           ("--plot-attention", args.plot_attention), ("--reference", args.reference),
                                           ("--beam-size", args.beam_size), ("--sampling-topk", args.sampling_topk),
                                           ("--sampling-temperature", args.sampling_temperature),
                                           ("--seed", args.seed)) if value is not None and value is not False]
        if given:
            raise UserError(f"--score scores the given translations, without a search: {given[0]} does not apply")
    if sampling:
        if args.beam_size is not None and args.beam_size > 1:
            raise UserError(f"--sampling-topk and --sampling-temperature draw one token at a time: --beam-size "
                            f"must be 1, got {args.beam_size} (--n-best N gives N samples)")
        require(args, positive=("n_best",))
    elif args.seed is not None:
        raise UserError("--seed applies to sampling only (--sampling-topk or --sampling-temperature)")
    else:
        beam_size = args.beam_size or configs[0].translate.beam_size
        if args.n_best is not None and not 1 <= args.n_best <= beam_size:
            raise UserError(f"--n-best must be between 1 and the beam size ({beam_size}), got {args.n_best}")
    return configs


def _open(path, mode):
    """``path`` opened (a binary input named .gz decompressed), or None for ``-``."""
    if path == "-":
        return None
    try:
        if mode == "rb" and is_gzip(path):
            with open(path, "rb") as f:
                if f.read(2) != b"\x1f\x8b":
                    raise DataError(f"{path}: not a gzip file (its name ends in .gz)")
            return gzip.open(path, "rb")
        return open(path, mode, encoding=None if "b" in mode else "utf-8", newline=None if "b" in mode else "\n")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as error:
        raise DataError(f"{path}: cannot open ({error.strerror})") from None


def _read_references(path):
    return [text for _, text in read_lines(path)]


def translate_main(argv=None, prog="translate.py"):
    args = translate_parser(prog).parse_args(argv)
    config = _check_decoding_options(args)[0]  # fail fast, before TensorFlow loads
    sampling = args.sampling_topk is not None or args.sampling_temperature is not None
    beam_size = 1 if sampling else args.beam_size or config.translate.beam_size
    references = _read_references(args.reference) if args.reference else None
    targets_count = count_lines(args.score) if args.score else None
    if args.score and args.input != "-":
        _check_score_lines(args.score, targets_count, args.input, _count_raw_lines(args.input))
    source = _open(args.input, "rb") or contextlib.nullcontext(sys.stdin.buffer)
    target = _open(args.output, "w") or contextlib.nullcontext(sys.stdout)

    import_tensorflow()
    from seq2seq.model_dir import load_decoder
    from seq2seq.plots import plot_attention
    from seq2seq.sampling import Sampling
    from seq2seq.translate import PARALLEL_BATCHES, Translator, alignment, line_chunks, one_line, score

    threads = share_cores(PARALLEL_BATCHES)  # the searches in flight, one intra-op thread each on 2 cores
    started = time.perf_counter()
    config, tokenizer, model = load_decoder(args.model, args.weights)
    translate_config = config.translate
    if args.length_penalty is not None:
        translate_config = dataclasses.replace(translate_config, length_penalty=args.length_penalty)
    if args.score:
        with source as binary, target as out:
            return _score(args, model, tokenizer, translate_config, line_chunks(binary), out, started)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    translator = Translator(model, tokenizer, translate_config, beam_size, args.n_best or 1,
                            Sampling(args.sampling_topk or 0, args.sampling_temperature or 1.0) if sampling else None,
                            seed)
    translator.warm_up(args.alignments or args.plot_attention is not None)
    loaded = time.perf_counter()

    attention = args.alignments or args.plot_attention is not None
    if args.plot_attention:
        os.makedirs(args.plot_attention, exist_ok=True)

    def write(out, index, hypotheses):
        for h in hypotheses if args.n_best else hypotheses[:1]:
            fields = [str(index), one_line(h.text), f"{h.score:.4f}"] if args.n_best else [one_line(h.text)]
            if args.alignments:
                fields.append(alignment(h))
            out.write(" ||| ".join(fields) + "\n")
        best = hypotheses[0]
        if args.plot_attention and best.target_pieces:
            plot_attention(best.source_pieces, best.target_pieces, best.attention,
                           os.path.join(args.plot_attention, f"{index}.png"), title=best.text)

    def warn_truncated(index):
        name = "<stdin>" if args.input == "-" else args.input
        print(f"warning: {name}:{index + 1}: longer than translate.max_input_length="
              f"{config.translate.max_input_length} subwords; translating its beginning only", file=sys.stderr)

    with source as binary, target as out:
        hypotheses = translator.translate_stream(line_chunks(binary), lambda i, hyps: write(out, i, hyps),
                                                 args.batch_size, attention, warn_truncated, out.flush)
    seconds = time.perf_counter() - loaded
    metrics = {"lines": len(hypotheses), "beam_size": beam_size, "load_seconds": round(loaded - started, 3),
               "translate_seconds": round(seconds, 3), "lines_per_sec": round(len(hypotheses) / max(seconds, 1e-9), 1),
               "searches_at_once": PARALLEL_BATCHES, "intra_op_threads": threads}
    if args.verbose:
        how = f"sampling with seed {seed}" if sampling else f"beam {beam_size}"
        print(f"translated {len(hypotheses)} lines in {seconds:.2f} s ({metrics['lines_per_sec']:.1f} "
              f"lines/s, {how}; {PARALLEL_BATCHES} searches at once, {threads or 'default'} intra-op thread(s) "
              f"each); model loaded and search compiled in {loaded - started:.2f} s", file=sys.stderr)
    if references is not None:
        if len(references) != len(hypotheses):
            raise DataError(f"{args.reference} has {len(references)} lines but {args.input} has "
                            f"{len(hypotheses)}: one reference line per input line is needed")
        lines, bleu, chrf = score(hypotheses, references)
        for line in lines:
            print(line, file=sys.stderr)
        metrics.update(bleu=round(bleu.score, 2), chrf=round(chrf.score, 2), signatures=lines)
    if args.metrics:
        _write_json(args.metrics, metrics)


def _count_raw_lines(path):
    """The lines of ``path`` as ``translate.line_chunks`` reads them (ending at ``\n``; a last
    line without one counts), whatever their encoding."""
    count, last = 0, b"\n"
    with _open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            count, last = count + block.count(b"\n"), block[-1:]
    return count + (last != b"\n")


def _check_score_lines(target_path, targets, source_path, sources):
    if targets != sources:
        raise DataError(f"{target_path} has {targets} lines but {source_path} has {sources}: "
                        "--score needs one target line per input line")


def _score(args, model, tokenizer, translate_config, chunks, out, started):
    """``translate.py --score``: writes ``log_prob<TAB>score`` per pair of an input chunk and
    the same number of lines of ``args.score``."""
    from seq2seq.scoring import Scorer

    scorer = Scorer(model, tokenizer, translate_config)
    scorer.warm_up()
    loaded = time.perf_counter()
    targets, sources = (text for _, text in read_lines(args.score)), 0
    name = "<stdin>" if args.input == "-" else args.input
    for chunk in chunks:
        wanted = list(itertools.islice(targets, len(chunk)))
        if len(wanted) < len(chunk):  # only from a pipe: files were counted first
            total = sources + len(chunk) + sum(len(rest) for rest in chunks)
            _check_score_lines(args.score, sources + len(wanted), name, total)
        truncated = []
        results = scorer.score(chunk, wanted, args.batch_size, truncated)
        for i in truncated:
            print(f"warning: {name}:{sources + i + 1}: longer than translate.max_input_length="
                  f"{translate_config.max_input_length} subwords; scoring with its beginning only", file=sys.stderr)
        out.writelines(f"{log_prob:.6f}\t{score:.6f}\n" for log_prob, score in results)
        out.flush()
        sources += len(chunk)
    _check_score_lines(args.score, sources + sum(1 for _ in targets), name, sources)
    seconds = time.perf_counter() - loaded
    if args.verbose:
        print(f"scored {sources} pairs in {seconds:.2f} s; model loaded and scoring compiled in "
              f"{loaded - started:.2f} s", file=sys.stderr)
    if args.metrics:
        _write_json(args.metrics, {"lines": sources, "load_seconds": round(loaded - started, 3),
                                   "score_seconds": round(seconds, 3),
                                   "lines_per_sec": round(sources / max(seconds, 1e-9), 1)})


def _write_json(path, record):
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2, ensure_ascii=False)
            f.write("\n")
    except OSError as error:
        raise DataError(f"{path}: cannot write ({error.strerror})") from None



def main(argv=None):
    """``seq2seq COMMAND ARGS...``: runs the command's ``main`` on ARGS."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        if argv and argv[0] in ("-h", "--help"):
            print(f"usage: seq2seq {{{','.join(COMMANDS)}}} [--help | ARGS...]")
            return 0
        raise UserError(f"usage: seq2seq {{{','.join(COMMANDS)}}} ARGS... (got {argv[0] if argv else 'nothing'})")
    command, rest = argv[0], argv[1:]
    if command == "train":
        return train_main(rest, "seq2seq train")
    if command == "translate":
        return translate_main(rest, "seq2seq translate")
    if command == "export":
        from seq2seq import export

        return export.main(rest)
    if command == "serve":
        from seq2seq import serve

        return serve.main(rest, "seq2seq serve")
    from seq2seq import bench

    return bench.main(rest)


def console():
    """The ``seq2seq`` console command (``seq2seq train`` on jemalloc where it is installed)."""
    if sys.argv[1:2] == ["train"]:
        exec_with_jemalloc()
    sys.exit(run_cli(main))


if __name__ == "__main__":
    console()
