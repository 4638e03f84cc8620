"""Plain-text corpora: open, decode and check line-aligned files, with one-line errors.

No TensorFlow here, so command lines can check their inputs before TensorFlow loads.
"""

import os
import re

from seq2seq.errors import DataError

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def read_lines(path, notes=None):
    """Yields ``(line_number, text)`` of a UTF-8 text file, with a DataError for any problem.

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
        f = open(path, "rb")
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
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


def check_data(data_config):
    """Checks the training and validation corpora of a ``DataConfig`` before any work starts."""
    for key in ("train_source", "train_target", "valid_source", "valid_target"):
        path = getattr(data_config, key)
        if not os.path.isfile(path):
            problem = "is a directory, expected a text file" if os.path.isdir(path) else "file not found"
            raise DataError(f"config key data.{key}: {path}: {problem}")
    check_parallel(data_config.train_source, data_config.train_target)
    check_parallel(data_config.valid_source, data_config.valid_target)
