"""Process set-up shared by the command lines."""

import os
import sys
import tempfile


def import_tensorflow():
    """Imports TensorFlow without its start-up chatter on stderr.

    TensorFlow's C++ core prints informational lines (oneDNN, CUDA probing) while it loads, before
    ``TF_CPP_MIN_LOG_LEVEL`` takes effect. They are captured and dropped; if the import fails they
    are printed, so nothing that explains a failure is hidden.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
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
    return tf
