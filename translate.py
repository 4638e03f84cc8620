#!/usr/bin/env python3
"""Translates text with a trained model, one output line per input line, in input order (the
same as ``seq2seq translate``; options: ``translate.py --help`` or ``seq2seq/cli.py``)."""

import sys

from seq2seq.cli import translate_main
from seq2seq.errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(translate_main))
