"""Process set-up shared by the command lines."""

import atexit
import gc
import os
import sys
import tempfile

ALLOCATOR_VARIABLE = "SEQ2SEQ_ALLOCATOR"  # "system": keep the C library's malloc
JEMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
                  "/usr/lib64/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2")


def find_jemalloc(paths=JEMALLOC_PATHS):
    """The first of ``paths`` that exists: an installed jemalloc shared library (Debian's and
    Ubuntu's ``libjemalloc2``, Fedora's ``jemalloc``), or None."""
    return next((path for path in paths if os.path.exists(path)), None)


def preloaded_allocator(environ=None):
    """The malloc replacement in ``LD_PRELOAD`` ("jemalloc" or "tcmalloc"), or None."""
    preload = (os.environ if environ is None else environ).get("LD_PRELOAD", "")
    return next((name for name in ("jemalloc", "tcmalloc") if name in preload), None)


def exec_with_jemalloc(environ=None, execv=os.execv):
    """Starts this training command again with jemalloc preloaded, where it is installed and the
    process runs on the C library's malloc; returns (having done nothing) otherwise, or where
    ``SEQ2SEQ_ALLOCATOR=system``. TensorFlow allocates every op's output tensor, some
    thousands of small tensors a training step, and a training step runs faster on jemalloc's
    thread caches (docs/benchmarks.md; translation does not gain). Call first thing in the
    training command's ``__main__``, before it reads its input: the new process gets the same arguments, streams and process id."""
    environ = os.environ if environ is None else environ
    if (environ.get(ALLOCATOR_VARIABLE, "jemalloc") == "system" or not sys.platform.startswith("linux")
            or preloaded_allocator(environ)):
        return
    path = find_jemalloc()
    if path is None:
        return
    environ["LD_PRELOAD"] = f"{path}:{environ['LD_PRELOAD']}" if environ.get("LD_PRELOAD") else path
    sys.stdout.flush()
    sys.stderr.flush()
    execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def import_tensorflow():
    """Imports TensorFlow without its start-up chatter on stderr.

    TensorFlow's C++ core prints informational lines (oneDNN, CUDA probing) while it loads, before
    ``TF_CPP_MIN_LOG_LEVEL`` takes effect. They are captured and dropped; if the import fails they
    are printed, so nothing that explains a failure is hidden.

    Keras is imported here too, with ``matplotlib.pyplot`` hidden from it: Keras imports pyplot
    when it is imported, if it can, for an image gallery this package does not use, which costs
    every command a large share of its start-up; ``seq2seq.plots`` imports pyplot where it draws.

    The objects of these modules (some hundred thousand) live as long as the process: the import
    runs with the cyclic garbage collector off, and moves them to its permanent generation
    (``gc.freeze``), so that no full collection later traverses them again; at exit, everything
    is frozen before Python finalizes, which would otherwise collect the whole heap once more
    while it tears the modules down (docs/benchmarks.md).
    """
    if "tensorflow" in sys.modules and "keras" in sys.modules:
        return sys.modules["tensorflow"]
    hidden = sys.modules.setdefault("matplotlib.pyplot", None) is None  # None: `import` raises ImportError
    collecting = gc.isenabled()
    gc.disable()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras  # noqa: F401
            import tensorflow as tf

            tf.config.list_physical_devices()
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if hidden:
                del sys.modules["matplotlib.pyplot"]
            if collecting:
                gc.enable()
    gc.freeze()
    atexit.register(gc.freeze)
    return tf


def usable_cores():
    """The cores this process may run on (its CPU affinity, as ``taskset`` sets it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def share_cores(ways):
    """Gives each of ``ways`` computations that run at once from their own threads (a training
    step's parts, searches in flight) an equal share of the cores for its ops: one intra-op
    thread each on 2 cores. With more threads each, the computations' small ops contend for the
    same cores. ``TF_NUM_INTRAOP_THREADS``, where set, decides instead. Call after
    ``import_tensorflow`` and before TensorFlow's runtime starts; returns the intra-op thread
    count, or None where the runtime had already started (several runs in one process) and keeps
    its own."""
    if os.environ.get("TF_NUM_INTRAOP_THREADS"):
        return int(os.environ["TF_NUM_INTRAOP_THREADS"])
    import tensorflow as tf

    threads = max(1, usable_cores() // ways)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:
        return None
    return threads
