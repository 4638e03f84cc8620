"""SentencePiece subword models: train on the training text, save with the model, encode, decode.

Fixed ids, the same in every model directory (and in the exported SavedModel):

======  ====  ==============================================
piece   id    use
======  ====  ==============================================
<pad>   0     padding; masked out of loss, attention, outputs
<unk>   1     unknown piece
<s>     2     BOS: first decoder input
</s>    3     EOS: ends every source sequence and every target
======  ====  ==============================================

Source sequences are ``pieces + [EOS]``; the decoder reads ``[BOS] + pieces`` and is trained
to predict ``pieces + [EOS]``.
"""

import dataclasses
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

import sentencepiece as spm

from seq2seq.corpus import corpus, read_column
from seq2seq.errors import ConfigError, ModelDirError, UserError

log = logging.getLogger("seq2seq")

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

JOINT_MODEL = "spm.model"
SOURCE_MODEL = "spm.source.model"
TARGET_MODEL = "spm.target.model"


def sample_lines(texts, max_lines, seed):
    """Returns at most ``max_lines`` non-empty lines drawn uniformly from ``texts``: paths of
    text files, or ``(path, column)`` pairs for one side of a TSV file (``corpus.read_column``).

    Reservoir sampling: one pass over the files, memory bounded by ``max_lines``.
    """
    rng = random.Random(seed)
    sample, seen = [], 0
    for text in texts:
        path, column = (text, None) if isinstance(text, str) else text
        for _, line in read_column(path, column):
            line = line.strip()
            if not line:
                continue
            seen += 1
            if len(sample) < max_lines:
                sample.append(line)
            else:
                j = rng.randrange(seen)
                if j < max_lines:
                    sample[j] = line
    return sample


def _names(texts):
    return ", ".join(text if isinstance(text, str) else text[0] for text in texts)


def train_sentencepiece(texts, model_path, tokenizer_config, seed):
    """Trains one SentencePiece model on ``texts`` (as in ``sample_lines``) and writes it to
    ``model_path``.

    The work runs in a child process: the memory of the line sample and of SentencePiece's
    trainer goes back to the system when it ends, instead of staying in the training process
    (on a 2,000,000-line corpus it raised the trainer's peak by 23 MB).
    """
    _finish(_start(texts, model_path, tokenizer_config, seed))


def _start(texts, model_path, tokenizer_config, seed):
    """Starts ``train_sentencepiece``'s child process; returns it (``_finish`` waits for it)."""
    request = {"texts": list(texts), "model_path": model_path, "seed": seed,
               "tokenizer": dataclasses.asdict(tokenizer_config)}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "seq2seq.tokenizer", json.dumps(request)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(process):
    """Waits for a ``_start``ed training; raises UserError with its error line if it failed."""
    _, stderr = process.communicate()
    if process.returncode != 0:
        errors = [line[len("error: "):] for line in stderr.splitlines() if line.startswith("error: ")]
        raise UserError(errors[-1] if errors else f"SentencePiece training failed:\n{stderr[-2000:]}")


class EarlyTraining:
    """The SentencePiece training of a new model directory, started before the trainer's other
    start-up work (``start``; TensorFlow's import, in ``train.py``) so that the two overlap:
    ``Tokenizer.for_training`` then waits for it. The models are written to a temporary
    directory and moved into the model directory only by ``Tokenizer.for_training``; ``cancel``
    ends an unused one."""

    def __init__(self, config):
        self.config = config
        self.folder = tempfile.mkdtemp(prefix="seq2seq-spm-")
        train = corpus(config.data, "train")
        tokenizer = config.tokenizer
        self.paths = Tokenizer.model_paths(self.folder, tokenizer.joint)
        sides = [([train.texts(0), train.texts(1)], self.paths[0])] if tokenizer.joint else [
            ([train.texts(0)], self.paths[0]), ([train.texts(1)], self.paths[1])]
        self.processes = [_start(texts, path, tokenizer, config.training.seed) for texts, path in sides]

    @classmethod
    def start(cls, model_dir, config):
        """An EarlyTraining if ``model_dir`` has no SentencePiece model yet, else None."""
        if all(os.path.isfile(path) for path in Tokenizer.model_paths(model_dir, config.tokenizer.joint)):
            return None
        return cls(config)

    def finish(self, source_path, target_path):
        """Waits for the training and moves the models to ``source_path`` and ``target_path``."""
        try:
            for process in self.processes:
                _finish(process)
            for trained, path in dict(zip(self.paths, (source_path, target_path))).items():  # joint: one model
                for ext in (".model", ".vocab"):
                    os.replace(trained[: -len(".model")] + ext, path[: -len(".model")] + ext)
        finally:
            self.cancel()

    def cancel(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
        shutil.rmtree(self.folder, ignore_errors=True)


def _train_sentencepiece_here(texts, model_path, tokenizer_config, seed):
    """``train_sentencepiece``'s work, in the current process."""
    lines = sample_lines(texts, tokenizer_config.max_sentences, seed)
    paths = _names(texts)
    if not lines:
        raise UserError(f"{paths}: no text to train the tokenizer on")
    prefix = model_path[: -len(".model")]
    with tempfile.TemporaryDirectory() as tmp:
        text = os.path.join(tmp, "sample.txt")
        with open(text, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)
        try:
            spm.SentencePieceTrainer.train(
                input=text, model_prefix=os.path.join(tmp, "spm"),
                vocab_size=tokenizer_config.vocab_size, model_type=tokenizer_config.model_type,
                character_coverage=tokenizer_config.character_coverage,
                pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
                # Small corpora (tests, toy tasks) may have fewer pieces than asked for.
                hard_vocab_limit=False, input_sentence_size=0, max_sentence_length=1 << 16,
                num_threads=os.cpu_count() or 1, minloglevel=2)
        except RuntimeError as error:
            too_small = re.search(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)", str(error))
            if too_small:
                raise ConfigError(
                    f"config key tokenizer.vocab_size: {tokenizer_config.vocab_size} is too small for the "
                    f"{int(too_small.group(2)) - 4} different characters of {paths} (and the 4 special "
                    f"pieces); raise it to at least {too_small.group(2)} or lower tokenizer.character_coverage"
                ) from None
            raise UserError(f"SentencePiece training failed on {paths}: {error}") from None
        for ext in (".model", ".vocab"):
            os.replace(os.path.join(tmp, "spm" + ext), prefix + ext)


class Tokenizer:
    """Source and target SentencePiece processors (the same one when the model is joint)."""

    def __init__(self, source_model, target_model):
        self.source_model_path = source_model
        self.target_model_path = target_model
        self.source = self._load(source_model)
        self.target = self.source if target_model == source_model else self._load(target_model)

    @staticmethod
    def _load(path):
        if not os.path.isfile(path):
            raise ModelDirError(f"{path}: SentencePiece model not found")
        try:
            return spm.SentencePieceProcessor(model_file=path)
        except (OSError, RuntimeError) as error:
            raise ModelDirError(f"{path}: not a SentencePiece model ({error})") from None

    @classmethod
    def model_paths(cls, model_dir, joint):
        if joint:
            path = os.path.join(model_dir, JOINT_MODEL)
            return path, path
        return os.path.join(model_dir, SOURCE_MODEL), os.path.join(model_dir, TARGET_MODEL)

    @classmethod
    def train(cls, model_dir, data_config, tokenizer_config, seed):
        """Trains the SentencePiece model(s) into ``model_dir`` and returns the Tokenizer."""
        os.makedirs(model_dir, exist_ok=True)
        source_path, target_path = cls.model_paths(model_dir, tokenizer_config.joint)
        train = corpus(data_config, "train")
        if tokenizer_config.joint:
            train_sentencepiece([train.texts(0), train.texts(1)], source_path, tokenizer_config, seed)
        else:
            train_sentencepiece([train.texts(0)], source_path, tokenizer_config, seed)
            train_sentencepiece([train.texts(1)], target_path, tokenizer_config, seed)
        return cls(source_path, target_path)

    @classmethod
    def for_training(cls, model_dir, config, wait=False, started=None):
        """The model directory's SentencePiece model(s), trained on ``config.data`` first if they
        are not there. ``wait``: another process (the chief) trains them; wait for the files,
        which appear whole (written, then renamed). ``started``: an ``EarlyTraining`` of them,
        waited for instead of training here (cancelled if the models are there)."""
        joint = config.tokenizer.joint
        source_path, target_path = cls.model_paths(model_dir, joint)
        if wait:
            log.info("waiting for the chief's SentencePiece model in %s", model_dir)
            while not (os.path.isfile(source_path) and os.path.isfile(target_path)):
                time.sleep(1.0)
        if os.path.isfile(source_path) and os.path.isfile(target_path):
            if started is not None:
                started.cancel()
            return cls(source_path, target_path)
        log.info("training SentencePiece (vocab_size %d, %s) on the training data", config.tokenizer.vocab_size,
                 "joint" if joint else "one model per side")
        if started is None:
            return cls.train(model_dir, config.data, config.tokenizer, config.training.seed)
        os.makedirs(model_dir, exist_ok=True)
        started.finish(source_path, target_path)
        return cls(source_path, target_path)

    @classmethod
    def load(cls, model_dir, joint):
        return cls(*cls.model_paths(model_dir, joint))

    @property
    def source_vocab_size(self):
        return self.source.get_piece_size()

    @property
    def target_vocab_size(self):
        return self.target.get_piece_size()

    def in_graph(self, sampling_alpha=0.0, nbest_size=-1):
        """The source and target tokenizers as tensorflow-text ``SentencepieceTokenizer`` ops (the
        same ids as ``encode_source`` and ``encode_target``, without EOS): the best segmentation,
        or with ``sampling_alpha`` > 0 a sampled one (``nbest_size`` and ``alpha`` as in
        SentencePiece's ``SampleEncode``; a bpe model drops merges with probability alpha).

        New ones for each dataset: the op's resource does not outlive the first dataset that
        used it.
        """
        import tensorflow as tf
        import tensorflow_text as tf_text

        nbest_size = nbest_size if sampling_alpha > 0 else 0

        def load(path):
            with open(path, "rb") as f:
                return tf_text.SentencepieceTokenizer(model=f.read(), out_type=tf.int32, nbest_size=nbest_size,
                                                      alpha=sampling_alpha)

        source = load(self.source_model_path)
        return source, source if self.target is self.source else load(self.target_model_path)

    def encode_source(self, lines):
        """Encodes source sentences: list of str -> list of id lists, each ending with EOS."""
        return [ids + [EOS_ID] for ids in self.source.encode(list(lines))]

    def encode_target(self, lines):
        """Encodes target sentences: list of str -> list of id lists, without BOS or EOS."""
        return self.target.encode(list(lines))

    def decode_target(self, ids):
        """Detokenizes target id lists (cut at the first EOS, padding ignored) into strings."""
        out = []
        for seq in ids:
            seq = list(seq)
            if EOS_ID in seq:
                seq = seq[: seq.index(EOS_ID)]
            out.append(self.target.decode([int(i) for i in seq if i not in (PAD_ID, BOS_ID)]))
        return out


def _main(argv):
    """``python -m seq2seq.tokenizer REQUEST_JSON``: the child process of ``train_sentencepiece``."""
    from seq2seq.config import TokenizerConfig

    request = json.loads(argv[0])
    _train_sentencepiece_here(request["texts"], request["model_path"], TokenizerConfig(**request["tokenizer"]),
                              request["seed"])


if __name__ == "__main__":
    from seq2seq.errors import run_cli

    sys.exit(run_cli(_main, sys.argv[1:]))
