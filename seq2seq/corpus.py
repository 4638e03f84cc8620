"""Plain-text corpora: open, decode and check line-aligned files, with one-line errors.

A parallel corpus is either two line-aligned files (``data.train_source`` and
``data.train_target``) or one file of ``source<TAB>target`` lines (``data.train``); any of
these files may be gzip-compressed (a name ending in ``.gz``). No TensorFlow here, so command
lines can check their inputs before TensorFlow loads.
"""

import gzip
import os
import re
import zlib
from dataclasses import dataclass

from seq2seq.errors import DataError

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def is_gzip(path):
    return path.endswith(".gz")


def read_lines(path, notes=None):
    """Yields ``(line_number, text)`` of a UTF-8 text file (gzip-compressed if its name ends
    in ``.gz``), with a DataError for any problem.

    Lines end at ``\n`` only. A ``\r\n`` ending and a UTF-8 byte order mark at the start of
    the file are removed; control characters are kept (SentencePiece normalizes them). If
    ``notes`` (a collections.Counter) is given, it counts what was found: ``CRLF line endings``,
    ``byte order mark``, ``lines with control characters``.
    """
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, expected a text file")
    try:
        f = gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
    number = 0
    try:
        with f:
            for number, raw in enumerate(f, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise DataError(f"{path}:{number}: invalid UTF-8 at byte {error.start}") from None
                if text.endswith("\n"):
                    text = text[:-2] if text.endswith("\r\n") else text[:-1]
                    if notes is not None and raw.endswith(b"\r\n"):
                        notes["CRLF line endings"] += 1
                if number == 1 and text.startswith("\ufeff"):
                    text = text[1:]
                    if notes is not None:
                        notes["byte order mark"] += 1
                if notes is not None and _CONTROL.search(text):
                    notes["lines with control characters"] += 1
                yield number, text
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise DataError(f"{path}:{number + 1}: not a readable gzip file ({error})") from None


def split_tab(path, number, text):
    """``(source, target)`` of a ``source<TAB>target`` line, or a DataError naming the line."""
    tabs = text.count("\t")
    if tabs != 1:
        raise DataError(f"{path}:{number}: expected source<TAB>target (exactly one tab), found {tabs} tabs")
    source, target = text.split("\t")
    return source, target


def read_column(path, column=None, notes=None):
    """Yields ``(line_number, text)``: the whole lines of ``path`` (``column`` None) or the
    source (0) or target (1) side of its ``source<TAB>target`` lines."""
    for number, text in read_lines(path, notes):
        yield number, text if column is None else split_tab(path, number, text)[column]


def count_lines(path):
    """Returns the number of lines of ``path`` (a last line without newline counts)."""
    count = 0
    for count, _ in read_lines(path):
        pass
    return count


def check_parallel(source_path, target_path):
    """Checks that both files exist, are UTF-8 and have the same number of lines; returns it."""
    n_source, n_target = count_lines(source_path), count_lines(target_path)
    if n_source != n_target:
        raise DataError(f"{source_path} has {n_source} lines but {target_path} has {n_target}: "
                        "a parallel corpus needs one target line per source line")
    if n_source == 0:
        raise DataError(f"{source_path}: empty corpus")
    return n_source


def read_parallel(source_path, target_path, notes=None):
    """Yields ``(line_number, source_text, target_text)`` of two line-aligned files; ``notes`` as
    in ``read_lines``, for both files together."""
    for (number, source), (_, target) in zip(read_lines(source_path, notes), read_lines(target_path, notes)):
        yield number, source, target


@dataclass(frozen=True)
class Corpus:
    """A parallel corpus: the line-aligned files ``source`` and ``target``, or (``tsv`` set) one
    file of ``source<TAB>target`` lines."""

    source: str = ""
    target: str = ""
    tsv: str = ""

    @property
    def name(self):
        """The file to name in messages about the corpus as a whole."""
        return self.tsv or self.source

    def pairs(self, notes=None):
        """Yields ``(line_number, source_text, target_text)``; ``notes`` as in ``read_lines``."""
        if not self.tsv:
            yield from read_parallel(self.source, self.target, notes)
            return
        for number, text in read_lines(self.tsv, notes):
            yield (number, *split_tab(self.tsv, number, text))

    def texts(self, side):
        """Where the text of one side (0: source, 1: target) is: ``(path, column)`` for
        ``read_column``."""
        return (self.tsv, side) if self.tsv else ((self.source, self.target)[side], None)

    def check(self):
        """Checks that the files exist, are UTF-8 and aligned (TSV: every line has one tab);
        returns the number of pairs."""
        if not self.tsv:
            return check_parallel(self.source, self.target)
        count = 0
        for count, _, _ in self.pairs():
            pass
        if count == 0:
            raise DataError(f"{self.tsv}: empty corpus")
        return count


def corpus(data_config, split):
    """The ``train`` or ``valid`` Corpus of a DataConfig: ``data.<split>`` if it is set, else the
    ``data.<split>_source`` and ``data.<split>_target`` pair."""
    tsv = getattr(data_config, split)
    if tsv:
        return Corpus(tsv=tsv)
    return Corpus(getattr(data_config, f"{split}_source"), getattr(data_config, f"{split}_target"))


def ignored_keys(data_config):
    """The lines to log about separate-file keys that a set ``data.train`` / ``data.valid`` overrides."""
    return [f"data.{split} is set: data.{split}_source and data.{split}_target are not used"
            for split in ("train", "valid") if getattr(data_config, split)]


def check_data(data_config):
    """Checks the training and validation corpora of a ``DataConfig`` before any work starts."""
    for split in ("train", "valid"):
        keys = (split,) if getattr(data_config, split) else (f"{split}_source", f"{split}_target")
        for key in keys:
            path = getattr(data_config, key)
            if not os.path.isfile(path):
                problem = "is a directory, expected a text file" if os.path.isdir(path) else "file not found"
                raise DataError(f"config key data.{key}: {path}: {problem}")
        corpus(data_config, split).check()
