"""tf.distribute: MirroredStrategy over two logical CPU devices trains like one device."""

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, toy_config, write_yaml

# Splits the CPU into two logical devices before TensorFlow starts, then runs train.py.
TWO_CPUS = r"""
import runpy, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.argv = ["train.py"] + sys.argv[1:]
runpy.run_path("train.py", run_name="__main__")
"""


def _train(config, model_dir, distribution):
    result = subprocess.run([sys.executable, "-c", TWO_CPUS, "--config", config, "--model-dir", model_dir,
                             "--set", f"training.distribution={distribution}"], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    losses = [float(loss) for loss in re.findall(r"step \d+/\d+ \| epoch \d+ \| loss ([\d.]+)", result.stderr)]
    return result.stderr, losses


def test_mirrored_over_two_devices_follows_the_single_device_loss_curve(toy_data, tmp_path):
    config = write_yaml(tmp_path / "config.yaml", toy_config(toy_data, **{
        "training.max_steps": 40, "training.validate_every": 40, "training.log_every": 1,
        "training.label_smoothing": 0.1, "training.clip_norm": 0.5}))
    single_log, single = _train(config, str(tmp_path / "single"), "none")
    mirrored_log, mirrored = _train(config, str(tmp_path / "mirrored"), "mirrored")
    assert "2 replicas (MirroredStrategy)" in mirrored_log and "replicas" not in single_log
    assert len(single) == len(mirrored) == 40
    # The same global batches, split in two: the same loss at every step, up to float rounding.
    assert mirrored == pytest.approx(single, abs=2e-3)
    assert single[-1] < single[0] / 2  # and it is a learning curve
    bleu = [re.search(r"validation at step 40: .*BLEU ([\d.]+)", log).group(1) for log in (single_log, mirrored_log)]
    assert float(bleu[0]) == pytest.approx(float(bleu[1]), abs=1.0)
