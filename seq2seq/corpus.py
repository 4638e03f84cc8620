"""Plain-text corpora: open, decode and check line-aligned files, with one-line errors.

No TensorFlow here, so command lines can check their inputs before TensorFlow loads.
"""

import os

from seq2seq.errors import DataError


def read_lines(path):
    """Yields ``(line_number, text)`` of a UTF-8 text file, with a DataError for any problem."""
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
                yield number, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as error:
                raise DataError(f"{path}:{number}: invalid UTF-8 at byte {error.start}") from None


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


def read_parallel(source_path, target_path):
    """Yields ``(line_number, source_text, target_text)`` of two line-aligned files."""
    for (number, source), (_, target) in zip(read_lines(source_path), read_lines(target_path)):
        yield number, source, target


def check_data(data_config):
    """Checks the training and validation corpora of a ``DataConfig`` before any work starts."""
    check_parallel(data_config.train_source, data_config.train_target)
    check_parallel(data_config.valid_source, data_config.valid_target)
