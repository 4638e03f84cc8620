#!/usr/bin/env python3
"""Trains a translation model: ``train.py --config CONFIG.yaml [--model-dir DIR] [--set KEY=VALUE ...]``
(the same as ``seq2seq train``; see ``seq2seq/cli.py``).

Re-running the same command on an existing model directory resumes where it stopped.
"""

import sys

from seq2seq.cli import train_main
from seq2seq.errors import run_cli
from seq2seq.runtime import exec_with_jemalloc

if __name__ == "__main__":
    exec_with_jemalloc()
    sys.exit(run_cli(train_main))
