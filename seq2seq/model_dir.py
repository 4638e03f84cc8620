"""The model directory: everything needed to translate, export or resume training.

    DIR/config.yaml          the resolved configuration
    DIR/format.json          the model directory format and the versions that wrote it
    DIR/spm.model            the joint SentencePiece model (or spm.source.model and spm.target.model)
    DIR/checkpoints/         the last checkpoints: model, optimizer, step, epoch, best score
    DIR/best/                the checkpoint with the best validation BLEU (model weights only)
    DIR/averaging/           the last validated models, for checkpoint averaging (training.average_checkpoints)
    DIR/validation.jsonl     one JSON line per validation
    DIR/training.jsonl       one JSON line per log line: step, epoch, loss, target tokens/s
    DIR/train.log            the training log
    DIR/tensorboard/         TensorBoard event files
    DIR/learning_curves.png  training loss and validation BLEU against steps
"""

import hashlib
import json
import os
import shutil

from seq2seq.config import SEGMENTATION_KEYS, config_from_dict, read_yaml, save_config
from seq2seq.errors import ConfigError, ModelDirError, UserError

FORMAT = 1  # bumped when a model directory written before can no longer be read
FORMAT_FILE = "format.json"
CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
BEST = "best"
AVERAGING = "averaging"
LEARNING_CURVES = "learning_curves.png"
VALIDATION_HISTORY = "validation.jsonl"
TRAINING_HISTORY = "training.jsonl"
TRAIN_LOG = "train.log"
TENSORBOARD = "tensorboard"


def write_format(model_dir):
    """Records the directory format and the library versions writing it (atomically)."""
    import keras
    import tensorflow as tf

    path = os.path.join(model_dir, FORMAT_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump({"format": FORMAT, "tensorflow": tf.__version__, "keras": keras.__version__}, f)
        f.write("\n")
    os.replace(path + ".tmp", path)


def check_format(model_dir):
    """Raises ModelDirError if ``model_dir`` was written in a format this version cannot read."""
    path = os.path.join(model_dir, FORMAT_FILE)
    if not os.path.isfile(path):
        return  # written before the format was recorded: format 1
    try:
        with open(path, encoding="utf-8") as f:
            written = json.load(f)
        version = int(written["format"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelDirError(f"{path}: unreadable model directory format file") from None
    if version != FORMAT:
        raise ModelDirError(
            f"{model_dir}: written in model directory format {version} (TensorFlow {written.get('tensorflow', '?')}); "
            f"this version of seq2seq reads format {FORMAT} only")


def read_model_config(model_dir):
    """Returns the Config saved in ``model_dir``, or raises ModelDirError if it is not a model directory."""
    if not os.path.isdir(model_dir):
        raise ModelDirError(f"{model_dir}: model directory not found")
    path = os.path.join(model_dir, CONFIG)
    if not os.path.isfile(path):
        raise ModelDirError(f"{model_dir}: not a model directory (no {CONFIG}; train one with train.py)")
    check_format(model_dir)
    try:
        return config_from_dict(read_yaml(path))
    except ConfigError as error:
        raise ModelDirError(f"{path}: invalid model config (written by another version of seq2seq?): "
                            f"{error}") from None


def latest_checkpoint(model_dir, prefer_best=True):
    """Path prefix of the best checkpoint (or the last one), or raises ModelDirError."""
    import tensorflow as tf

    folders = (BEST, CHECKPOINTS) if prefer_best else (CHECKPOINTS,)
    for folder in folders:
        path = tf.train.latest_checkpoint(os.path.join(model_dir, folder))
        if path:
            return path
    raise ModelDirError(f"{model_dir}: no trained checkpoint in {' or '.join(folders)}/ (train the model first)")


def check_trained(model_dir):
    """Returns the Config of a trained model directory (one with a checkpoint and its SentencePiece
    model files), or raises ModelDirError; without TensorFlow."""
    from seq2seq.tokenizer import Tokenizer

    config = read_model_config(model_dir)
    if not any(os.path.isfile(os.path.join(model_dir, folder, "checkpoint")) for folder in (BEST, CHECKPOINTS)):
        raise ModelDirError(f"{model_dir}: no trained checkpoint in {BEST}/ or {CHECKPOINTS}/ (train the model first)")
    for path in Tokenizer.model_paths(model_dir, config.tokenizer.joint):
        if not os.path.isfile(path):
            raise ModelDirError(f"{path}: SentencePiece model not found")
    return config


def copy_tokenizer(trained_dir, model_dir, joint):
    """Copies the SentencePiece model(s) of ``trained_dir`` into ``model_dir``; raises UserError
    if ``model_dir`` already holds other ones (the trained weights would read other ids)."""
    from seq2seq.tokenizer import Tokenizer

    for model_path in sorted(set(Tokenizer.model_paths(trained_dir, joint))):
        for path in (model_path, model_path[: -len(".model")] + ".vocab"):
            target = os.path.join(model_dir, os.path.basename(path))
            if not os.path.isfile(path):
                continue
            if os.path.isfile(target):
                if _digest(path) != _digest(target):
                    raise UserError(f"{target}: another SentencePiece model than {path}; fine-tune into a new "
                                    "--model-dir")
                continue
            shutil.copyfile(path, target + ".tmp")
            os.replace(target + ".tmp", target)


def restore_weights(model, model_dir, prefer_best=True):
    """Restores ``model``'s weights from the best checkpoint of ``model_dir`` (the average of the
    last ones when it scored better; else the last checkpoint); returns the checkpoint's path."""
    import tensorflow as tf

    checkpoint_path = latest_checkpoint(model_dir, prefer_best)
    try:
        tf.train.Checkpoint(model=model).restore(checkpoint_path).expect_partial().assert_existing_objects_matched()
    except (tf.errors.OpError, AssertionError, ValueError) as error:
        message = str(error).strip().splitlines()[0]
        raise ModelDirError(f"{checkpoint_path}: cannot restore the model ({message})") from None
    return checkpoint_path


def load_model(model_dir, prefer_best=True):
    """Loads ``(config, tokenizer, model)`` from a trained model directory, weights restored."""
    from seq2seq import vocabulary
    from seq2seq.model import Seq2Seq
    from seq2seq.tokenizer import Tokenizer

    config = read_model_config(model_dir)
    tokenizer = Tokenizer.load(model_dir, config.tokenizer.joint)
    latest_checkpoint(model_dir, prefer_best)  # a missing checkpoint is reported before the model is built
    pieces = vocabulary.load(model_dir, config, tokenizer.target_vocab_size)
    model = Seq2Seq.from_config_section(config.model, tokenizer.source_vocab_size, tokenizer.target_vocab_size,
                                        pieces)
    restore_weights(model, model_dir, prefer_best)
    return config, tokenizer, model


def sentencepiece_paths(model_dir, config):
    """The (source, target) SentencePiece model files of ``model_dir`` (the same path twice
    when its model is joint)."""
    from seq2seq.tokenizer import JOINT_MODEL, SOURCE_MODEL, TARGET_MODEL

    if config.tokenizer.joint:
        path = os.path.join(model_dir, JOINT_MODEL)
        return path, path
    return os.path.join(model_dir, SOURCE_MODEL), os.path.join(model_dir, TARGET_MODEL)


def _digest(path):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        raise ModelDirError(f"{path}: SentencePiece model not found") from None
    except OSError as error:
        raise ModelDirError(f"{path}: cannot read ({error.strerror})") from None


def check_ensemble_weights(weights, model_dirs):
    """``--weights``: None, or one non-negative weight per model directory, not all 0."""
    if weights is None:
        return
    if len(weights) != len(model_dirs):
        raise UserError(f"--weights gives {len(weights)} weights for {len(model_dirs)} models (one weight per --model)")
    if min(weights) < 0 or sum(weights) <= 0:
        raise UserError(f"--weights must be non-negative and not all 0, got {' '.join(map(str, weights))}")


def check_shared_tokenizers(model_dirs, configs):
    """Raises ModelDirError naming two model directories whose source or target SentencePiece
    models differ (their files' bytes): an ensemble's members must read and write the same ids.

    Args:
      model_dirs: list of model directories; configs: their ``Config``s, in the same order.
    """
    first = [_digest(path) for path in sentencepiece_paths(model_dirs[0], configs[0])]
    for model_dir, config in zip(model_dirs[1:], configs[1:]):
        digests = [_digest(path) for path in sentencepiece_paths(model_dir, config)]
        for side, ours, theirs in zip(("source", "target"), first, digests):
            if ours != theirs:
                raise ModelDirError(f"{model_dirs[0]} and {model_dir} have different {side} SentencePiece models: "
                                    "the models of an ensemble must share their source and target SentencePiece "
                                    "models")


def load_decoder(model_dirs, weights=None):
    """Loads one model, or an ensemble of several, for decoding.

    Returns ``(config, tokenizer, model)``: the first directory's config and tokenizer, and its
    ``Seq2Seq`` or, for several directories, an ``Ensemble`` of theirs with ``weights``.
    ``check_shared_tokenizers`` must have passed.
    """
    loaded = [load_model(model_dir) for model_dir in model_dirs]
    config, tokenizer, model = loaded[0]
    for model_dir, (_, _, other) in zip(model_dirs[1:], loaded[1:]):
        if other.settings["output_pieces"] != model.settings["output_pieces"]:
            raise ModelDirError(f"{model_dirs[0]} and {model_dir} have different output vocabularies "
                                "(model.output_vocabulary): the models of an ensemble must score the same pieces")
    if len(loaded) > 1:
        from seq2seq.ensemble import Ensemble

        model = Ensemble([m for _, _, m in loaded], weights)
    return config, tokenizer, model


def read_history(model_dir, name=VALIDATION_HISTORY):
    """A history of the model directory (``VALIDATION_HISTORY`` or ``TRAINING_HISTORY``): a list
    of dicts, oldest first (a line cut short by a killed run is skipped)."""
    records = []
    path = os.path.join(model_dir, name)
    if not os.path.isfile(path):
        return records
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def prepare(model_dir, config):
    """Creates the model directory for training ``config``, or checks that the run it holds was
    trained with the same ``tokenizer`` and ``model`` sections; saves the config and the format."""
    os.makedirs(model_dir, exist_ok=True)
    config_path = os.path.join(model_dir, CONFIG)
    if os.path.isfile(config_path):
        check_format(model_dir)
        saved = config_from_dict(read_yaml(config_path))
        for section in ("tokenizer", "model"):
            old, new = getattr(saved, section).__dict__, getattr(config, section).__dict__
            for key in old:
                if old[key] != new[key] and f"{section}.{key}" not in SEGMENTATION_KEYS:
                    raise UserError(f"{model_dir}: was trained with {section}.{key}={old[key]!r}, not {new[key]!r}; "
                                    "use another --model-dir to train a different model")
    save_config(config, config_path)
    write_format(model_dir)
