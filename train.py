#!/usr/bin/env python3
"""Trains a translation model: ``train.py --config CONFIG.yaml [--model-dir DIR] [--set KEY=VALUE ...]``.

Re-running the same command on an existing model directory resumes where it stopped.
"""

import argparse
import os
import sys

from seq2seq.config import load_config
from seq2seq.corpus import check_data
from seq2seq.errors import run_cli
from seq2seq.runtime import import_tensorflow


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].split(": ")[0])
    parser.add_argument("--config", required=True, help="YAML experiment config (see configs/)")
    parser.add_argument("--model-dir", help="where to write the model (default: runs/<config name>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config key by its dotted path, e.g. training.max_steps=200")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    config = load_config(args.config, args.overrides)
    check_data(config.data)
    model_dir = args.model_dir or os.path.join("runs", os.path.splitext(os.path.basename(args.config))[0])

    import_tensorflow()  # only once the arguments and data are known to be valid
    from seq2seq.training import Trainer

    trainer = Trainer(config, model_dir)
    trainer.train()
    if trainer.stop_signal is not None:  # stopped by Ctrl-C or SIGTERM, after saving a checkpoint
        return 128 + trainer.stop_signal


if __name__ == "__main__":
    sys.exit(run_cli(main))
