"""The output vocabulary: which target pieces the output layer scores.

With ``model.output_vocabulary: all`` the output layer has a row for every piece of the target
SentencePiece model. With ``observed`` it has rows only for the pieces that occur in the best
segmentation of the training targets, and for the special pieces (padding, ``<unk>``, BOS, EOS):
a joint SentencePiece model holds many pieces that only the source language uses, and the
output layer, with the softmax over it, is the largest part of a training step and of a search
step. The model's output index i then stands for target id ``ids[i]``; target ids outside the
list (pieces that a fine-tuning corpus brings) are learned and scored as ``<unk>``.

The list is fixed when a model directory's training starts, from the corpus pass that counts
the batches, and is kept in ``DIR/output_vocabulary.txt``, one ``id<TAB>piece`` line per output
row, ascending ids; fine-tuning (``--init-from``) copies it with the SentencePiece model.
"""

import os
import shutil

import numpy as np

from seq2seq.errors import ModelDirError, UserError
from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID

FILE = "output_vocabulary.txt"
SPECIAL_IDS = (PAD_ID, UNK_ID, BOS_ID, EOS_ID)


def path(model_dir):
    return os.path.join(model_dir, FILE)


def observed(counts):
    """counts: int array [target vocabulary size], each target id's count in the training targets
    -> the sorted list of the ids that occur, and the special ones."""
    return sorted(set(np.flatnonzero(counts).tolist()) | set(SPECIAL_IDS))


def write(file_path, ids, piece_of):
    """Writes ``ids`` (ascending) with their pieces (``piece_of(id) -> str``) atomically."""
    with open(file_path + ".tmp", "w", encoding="utf-8") as f:
        for i in ids:
            f.write(f"{i}\t{piece_of(i)}\n")
    os.replace(file_path + ".tmp", file_path)


def read(file_path, vocab_size):
    """The ids of an output vocabulary file, checked against a target vocabulary of
    ``vocab_size`` ids; raises ModelDirError naming the file and line of the first problem."""
    try:
        with open(file_path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise ModelDirError(f"{file_path}: output vocabulary not found (the config sets "
                            "model.output_vocabulary: observed)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ModelDirError(f"{file_path}: cannot read ({getattr(error, 'strerror', None) or error})") from None
    ids = []
    for number, line in enumerate(lines, 1):
        field = line.split("\t", 1)[0]
        if not field.isdigit() or int(field) >= vocab_size:
            raise ModelDirError(f"{file_path}:{number}: expected 'id<TAB>piece' with an id below {vocab_size}, "
                                f"got {line[:40]!r}")
        if ids and int(field) <= ids[-1]:
            raise ModelDirError(f"{file_path}:{number}: ids must ascend, {field} follows {ids[-1]}")
        ids.append(int(field))
    missing = sorted(set(SPECIAL_IDS) - set(ids))
    if missing:
        raise ModelDirError(f"{file_path}: the special ids {missing} are missing (every output vocabulary "
                            f"holds {list(SPECIAL_IDS)})")
    return ids


def load(model_dir, config, vocab_size):
    """The output ids of a trained model directory: None for ``all``, else its file's."""
    if config.model.output_vocabulary == "all":
        return None
    return read(path(model_dir), vocab_size)


def copy(trained_dir, model_dir):
    """Fine-tuning: the trained directory's output vocabulary, if it has one, becomes
    ``model_dir``'s; raises UserError if ``model_dir`` holds another one."""
    source, target = path(trained_dir), path(model_dir)
    if not os.path.isfile(source):
        return
    if os.path.isfile(target):
        with open(source, "rb") as a, open(target, "rb") as b:
            if a.read() != b.read():
                raise UserError(f"{target}: another output vocabulary than {source}; fine-tune into a new --model-dir")
        return
    shutil.copyfile(source, target + ".tmp")
    os.replace(target + ".tmp", target)


def for_training(model_dir, config, tokenizer, counts, init_from=None, write_file=True):
    """The output ids a training of ``model_dir`` uses, and how many target tokens of the corpus
    lie outside them (trained as ``<unk>``).

    The model directory's file if it has one (resuming), else ``init_from``'s (fine-tuning), else
    the ids observed in ``counts`` (int array [target vocabulary size]), written to the model
    directory when ``write_file`` (the chief of a multi-worker training). None for ``all``.
    """
    if config.model.output_vocabulary == "all":
        return None, 0
    vocab_size = tokenizer.target_vocab_size
    if os.path.isfile(path(model_dir)):
        ids = read(path(model_dir), vocab_size)
    elif init_from:
        ids = read(path(init_from), vocab_size)
    else:
        ids = observed(counts)
    if write_file and not os.path.isfile(path(model_dir)):
        write(path(model_dir), ids, tokenizer.target.id_to_piece)
    outside = np.ones(vocab_size, bool)
    outside[ids] = False
    return ids, int(counts[outside].sum())
