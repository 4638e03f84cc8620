"""User-facing errors and the command-line wrapper that reports them.

A ``UserError`` is a mistake the user can fix (a missing file, a bad config key, a model
directory that is not one). Command lines print it as one line on stderr and exit non-zero;
they never show a traceback for it.
"""

import sys


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
    """Runs ``main(argv)`` and turns a ``UserError`` into ``error: ...`` on stderr.

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
