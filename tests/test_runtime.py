"""The commands' process set-up: jemalloc preloaded by starting the training command again;
TensorFlow imported with its objects out of the garbage collector's way."""

import subprocess
import sys

import pytest

from conftest import ROOT
from seq2seq import runtime


class Exec(Exception):
    """Raised by the fake ``execv``: the arguments it got."""


def fake_execv(path, argv):
    raise Exec(path, argv)


@pytest.fixture
def jemalloc_at(monkeypatch):
    monkeypatch.setattr(runtime, "find_jemalloc", lambda: "/lib/libjemalloc.so.2")


def test_a_command_starts_again_with_jemalloc_preloaded(jemalloc_at):
    environ = {"PATH": "/bin"}
    with pytest.raises(Exec) as started:
        runtime.exec_with_jemalloc(environ, fake_execv)
    assert started.value.args == (sys.executable, [sys.executable, *sys.orig_argv[1:]])
    assert environ == {"PATH": "/bin", "LD_PRELOAD": "/lib/libjemalloc.so.2"}
    # Other preloaded libraries stay, after it.
    environ = {"LD_PRELOAD": "/lib/other.so"}
    with pytest.raises(Exec):
        runtime.exec_with_jemalloc(environ, fake_execv)
    assert environ["LD_PRELOAD"] == "/lib/libjemalloc.so.2:/lib/other.so"


@pytest.mark.parametrize("environ", [{"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"},
                                     {"LD_PRELOAD": "/usr/lib/libtcmalloc_minimal.so.4"},
                                     {"SEQ2SEQ_ALLOCATOR": "system"}])
def test_no_second_start_where_an_allocator_is_preloaded_or_the_system_one_is_asked_for(jemalloc_at, environ):
    before = dict(environ)
    runtime.exec_with_jemalloc(environ, fake_execv)  # returns: no Exec
    assert environ == before


def test_no_second_start_without_jemalloc(monkeypatch):
    monkeypatch.setattr(runtime, "find_jemalloc", lambda: None)
    environ = {}
    runtime.exec_with_jemalloc(environ, fake_execv)
    assert environ == {}


def test_find_jemalloc_returns_an_existing_library_or_none(tmp_path):
    library = tmp_path / "libjemalloc.so.2"
    assert runtime.find_jemalloc((str(tmp_path / "missing.so"), str(library))) is None
    library.write_bytes(b"")
    assert runtime.find_jemalloc((str(tmp_path / "missing.so"), str(library))) == str(library)


def test_preloaded_allocator_names_the_malloc_replacement():
    assert runtime.preloaded_allocator({"LD_PRELOAD": "/a.so:/usr/lib/libjemalloc.so.2"}) == "jemalloc"
    assert runtime.preloaded_allocator({"LD_PRELOAD": "/usr/lib/libtcmalloc.so.4"}) == "tcmalloc"
    assert runtime.preloaded_allocator({}) is None


FROZEN_AT_EXIT = """
import atexit, gc, sys
atexit.register(lambda: print(gc.isenabled(), after_import, gc.get_freeze_count()))  # runs after the exit's freeze
from seq2seq.runtime import import_tensorflow
import_tensorflow()
after_import = gc.get_freeze_count()
kept = [[i] for i in range(50_000)]
"""


@pytest.mark.parametrize("collecting", [True, False])
def test_tensorflow_is_imported_frozen_and_everything_is_frozen_before_python_finalizes(collecting):
    """Python's finalization collects every object it can reach once more; TensorFlow's modules'
    objects sit in the permanent generation from the import on, the rest from the exit on. The
    collector is left as it was found."""
    code = FROZEN_AT_EXIT if collecting else "import gc; gc.disable()" + FROZEN_AT_EXIT
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    enabled, after_import, at_exit = result.stdout.split()
    assert enabled == str(collecting)
    assert int(after_import) > 100_000  # TensorFlow's and Keras's objects
    assert int(at_exit) > int(after_import) + 40_000  # the lists made after the import
