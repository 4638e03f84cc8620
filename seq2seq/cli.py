"""The command lines: ``seq2seq train|translate|export|bench ...`` (the console command), with
``train.py`` and ``translate.py`` as thin wrappers over the first two.

Every command checks its arguments before TensorFlow loads, with the same validators
(``require``), and reports a bad one as one ``error:`` line.
"""

import argparse
import contextlib
import dataclasses
import gzip
import json
import os
import sys
import time

from seq2seq.config import fine_tuning_config, load_config
from seq2seq.corpus import check_data, is_gzip, read_lines
from seq2seq.errors import DataError, UserError, run_cli
from seq2seq.model_dir import check_trained, read_model_config
from seq2seq.runtime import import_tensorflow

TRANSLATE_USAGE = """Translates text with a trained model, one output line per input line, in input order.

    translate.py --model DIR [--input PATH|-] [--output PATH|-] [--beam-size N] [--length-penalty A] [--n-best N]
                 [--alignments] [--plot-attention DIR] [--batch-size N] [--reference PATH] [--metrics PATH]

With --n-best N, each input line gives N lines ``index ||| translation ||| score`` (index from
0, best first). --alignments appends `` ||| i-j ...`` to each translation: for each output
subword j, the source subword i with the highest attention. --plot-attention DIR writes
DIR/<line>.png, a heatmap of each best translation's attention. With --reference, sacrebleu's
BLEU and chrF lines (with signatures) go to stderr. --metrics PATH writes the figures as JSON
(lines, load and translation seconds, lines/s; BLEU, chrF and signatures with --reference).
"""

COMMANDS = ("train", "translate", "export", "bench")


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

    import_tensorflow()  # only once the arguments and data are known to be valid
    from seq2seq.training import Trainer

    trainer = Trainer(config, model_dir, args.init_from)
    trainer.train()
    if trainer.stop_signal is not None:  # stopped by Ctrl-C or SIGTERM, after saving a checkpoint
        return 128 + trainer.stop_signal


def translate_parser(prog="translate.py"):
    parser = argparse.ArgumentParser(prog=prog, description=TRANSLATE_USAGE.splitlines()[0])
    parser.add_argument("--model", required=True, help="trained model directory")
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
    return parser


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
    require(args, positive=("batch_size", "beam_size"), non_negative=("length_penalty",))
    config = read_model_config(args.model)  # fail fast, before TensorFlow loads
    beam_size = args.beam_size or config.translate.beam_size
    if args.n_best is not None and not 1 <= args.n_best <= beam_size:
        raise UserError(f"--n-best must be between 1 and the beam size ({beam_size}), got {args.n_best}")
    references = _read_references(args.reference) if args.reference else None
    source = _open(args.input, "rb") or contextlib.nullcontext(sys.stdin.buffer)
    target = _open(args.output, "w") or contextlib.nullcontext(sys.stdout)

    import_tensorflow()
    from seq2seq.model_dir import load_model
    from seq2seq.plots import plot_attention
    from seq2seq.translate import Translator, alignment, line_chunks, one_line, score

    started = time.perf_counter()
    config, tokenizer, model = load_model(args.model)
    translate_config = config.translate
    if args.length_penalty is not None:
        translate_config = dataclasses.replace(translate_config, length_penalty=args.length_penalty)
    translator = Translator(model, tokenizer, translate_config, beam_size, args.n_best or 1)
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
               "translate_seconds": round(seconds, 3), "lines_per_sec": round(len(hypotheses) / max(seconds, 1e-9), 1)}
    if args.verbose:
        print(f"translated {len(hypotheses)} lines in {seconds:.2f} s ({metrics['lines_per_sec']:.1f} "
              f"lines/s, beam {beam_size}); model loaded and search compiled in "
              f"{loaded - started:.2f} s", file=sys.stderr)
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
    from seq2seq import bench

    return bench.main(rest)


def console():
    """The ``seq2seq`` console command."""
    sys.exit(run_cli(main))


if __name__ == "__main__":
    console()
