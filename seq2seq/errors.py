"""User-facing errors and the command-line wrapper that reports them.

A ``UserError`` is a mistake the user can fix (a missing file, a bad config key, a model
directory that is not one). Command lines print it as one line on stderr and exit non-zero;
they never show a traceback for it. Any other exception (a bug, or a failure in TensorFlow) is
also one ``error:`` line and a non-zero exit; its traceback goes to the log file (``train.log``)
or, where there is none, to a file in the temporary directory that the line names.
"""

import logging
import re
import sys
import tempfile
import traceback


class UserError(Exception):
    """A problem with the user's input, reported as one line and exit status 2."""

    exit_code = 2


class ConfigError(UserError):
    """An invalid configuration: unknown key, wrong type or impossible value."""


class DataError(UserError):
    """An invalid corpus file: missing, unreadable, mismatched line counts, bad encoding."""


class ModelDirError(UserError):
    """A model directory that is missing, incomplete or not a model directory at all."""


def run_cli(main, argv=None):
    """Runs ``main(argv)``: a ``UserError`` becomes ``error: ...`` on stderr, any other exception
    ``error: <type>: <first line of its message> (traceback in <file>)``.

    Returns the process exit status, for ``sys.exit``: ``main``'s return value, or 0.
    """
    try:
        return main(argv) or 0
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 (the last resort: the traceback goes to a file)
        # TensorFlow's messages start with the op's function name, "{{function_node ...}}".
        lines = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", str(error).strip()).splitlines()
        message = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
        print(f"error: {message} (traceback in {save_traceback()})", file=sys.stderr)
        return 1


def save_traceback():
    """Writes the traceback of the exception being handled to the log files of the ``seq2seq``
    logger (``train.log``) or, when it has none, to a new file in the temporary directory;
    returns the path written."""
    record = logging.LogRecord("seq2seq", logging.ERROR, __file__, 0, "unexpected error", None, sys.exc_info())
    files = [h for h in logging.getLogger("seq2seq").handlers if isinstance(h, logging.FileHandler)]
    for handler in files:
        handler.handle(record)
    if files:
        return files[0].baseFilename
    with tempfile.NamedTemporaryFile("w", prefix="seq2seq-", suffix=".traceback", delete=False,
                                     encoding="utf-8") as f:
        f.write(traceback.format_exc())
    return f.name
