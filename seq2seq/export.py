"""Exports a trained model as a TensorFlow SavedModel for TensorFlow Serving.

    python -m seq2seq.export --model DIR [--model DIR ... [--weights W ...]] --output EXPORT_DIR
                             [--version N] [--beam-size N] [--length-penalty A] [--max-length-ratio R]
                             [--overwrite]

writes ``EXPORT_DIR/<version>/`` (version 1 by default), the layout TensorFlow Serving loads.
Its ``serving_default`` signature maps ``text`` (tf.string [batch], raw sentences) to
``translation`` (tf.string [batch], detokenized) and ``score`` (tf.float32 [batch], the
length-normalized log-probability of the translation; 0 for an input without any subword).
Its ``score`` signature maps ``text`` and ``translation`` (tf.string [batch] each, given
pairs) to ``log_prob`` (tf.float32 [batch], log P(translation | text)) and ``score`` (the
length-normalized one), the numbers of ``translate.py --score``. ``--model`` given more than
once exports the ensemble of the models (``seq2seq.ensemble``), with the same signatures; the
first model's translate settings apply. SentencePiece tokenization (tensorflow-text), the beam search of ``seq2seq.search`` and
detokenization all run inside the graph, and the SentencePiece model file(s) are copied into
the SavedModel's ``assets/``. A consumer needs ``tensorflow`` and ``tensorflow_text`` only:

    import tensorflow as tf
    import tensorflow_text  # noqa: F401 (registers the SentencePiece ops)
    translate = tf.saved_model.load("EXPORT_DIR/1").signatures["serving_default"]
    translate(text=tf.constant(["Ein Hund rennt."]))["translation"]
"""

import argparse
import os
import shutil
import sys
import tempfile

from seq2seq.cli import require
from seq2seq.errors import UserError, run_cli
from seq2seq.model_dir import check_ensemble_weights, check_shared_tokenizers, read_model_config
from seq2seq.runtime import import_tensorflow

SIGNATURE = "serving_default"
SCORE_SIGNATURE = "score"


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m seq2seq.export", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, action="append",
                        help="trained model directory; given more than once, the ensemble of the models")
    parser.add_argument("--weights", type=float, nargs="+", metavar="W",
                        help="the ensemble's weights, one per --model (default: equal)")
    parser.add_argument("--output", required=True, help="export directory; the SavedModel goes to OUTPUT/VERSION")
    parser.add_argument("--version", type=int, default=1, help="model version, the subdirectory name (default 1)")
    parser.add_argument("--beam-size", type=int, help="beam size (default: translate.beam_size of the config)")
    parser.add_argument("--length-penalty", type=float, help="GNMT length penalty α (default: from the config)")
    parser.add_argument("--max-length-ratio", type=float,
                        help="output length limit as a multiple of the source length (default: from the config)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT/VERSION if it exists")
    return parser.parse_args(argv)


def _sentencepiece(path):
    """A tensorflow-text SentencePiece tokenizer for the model file at ``path``.

    tensorflow-text's SentencePiece op takes the model as an attribute, not as a tensor input,
    so the serialized model lives in the graph itself; ``build_module`` also ships the file as a
    SavedModel asset for consumers that tokenize outside the graph.
    """
    import tensorflow as tf
    import tensorflow_text as tf_text

    with open(path, "rb") as f:
        return tf_text.SentencepieceTokenizer(model=f.read(), out_type=tf.int32)


def build_module(model, tokenizer, beam_size, length_penalty, max_length_ratio, min_output_length,
                 max_input_length):
    """The tf.Module to save: ``module.translate(text)`` -> {"translation", "score"} and
    ``module.score(text, translation)`` -> {"log_prob", "score"}, each one graph.

    Args:
      model: a trained ``Seq2Seq``, or an ``Ensemble`` of them.
      tokenizer: the model directory's ``Tokenizer`` (its SentencePiece model paths are used).
    """
    import tensorflow as tf

    from seq2seq.scoring import forced_log_probs
    from seq2seq.search import beam_search
    from seq2seq.search import length_penalty as penalty
    from seq2seq.tokenizer import EOS_ID, PAD_ID

    module = tf.Module()
    # The model's variables, not the Keras model object: tracking the Keras model itself saves
    # variables that TensorFlow 1-style loaders (TensorFlow Serving, `saved_model_cli run`)
    # cannot restore ("Could not find variable ..."); keras.export.ExportArchive does the same.
    module.model_variables = [variable.value for variable in model.variables]
    module.source_tokenizer = _sentencepiece(tokenizer.source_model_path)
    joint = tokenizer.target_model_path == tokenizer.source_model_path
    module.target_tokenizer = module.source_tokenizer if joint else _sentencepiece(tokenizer.target_model_path)
    # The SentencePiece model files, as assets/ of the SavedModel (``loaded.sentencepiece_models``).
    module.sentencepiece_models = {side: tf.saved_model.Asset(path) for side, path in
                                   (("source", tokenizer.source_model_path), ("target", tokenizer.target_model_path))}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")], autograph=False)
    def translate(text):
        """text: string [batch] -> translation: string [batch], score: float32 [batch]."""
        pieces = module.source_tokenizer.tokenize(text)  # int32 ragged [batch, (pieces)]
        # As in translate.py: a line without any subword (empty, blank) gets an empty translation,
        # and a line longer than translate.max_input_length is cut to it.
        has_pieces = pieces.row_lengths() > 0
        rows = tf.where(has_pieces)[:, 0]
        sources = tf.gather(pieces, rows)[:, : max_input_length - 1]
        eos = tf.fill([tf.shape(rows)[0], 1], tf.constant(EOS_ID, tf.int32))
        source = tf.concat([sources, tf.RaggedTensor.from_tensor(eos)], axis=1).to_tensor(default_value=PAD_ID)

        def search():
            result = beam_search(model, source, beam_size, length_penalty, max_length_ratio, min_output_length,
                                 keep_attention=False)
            tokens, lengths = result.tokens[:, 0], result.lengths[:, 0]
            ends_with_eos = tf.equal(tf.gather(tokens, tf.maximum(lengths - 1, 0), batch_dims=1), EOS_ID)
            lengths -= tf.cast(ends_with_eos, tf.int32)
            texts = module.target_tokenizer.detokenize(tf.RaggedTensor.from_tensor(tokens, lengths=lengths))
            return texts, result.scores[:, 0]

        def nothing():
            return tf.zeros([0], tf.string), tf.zeros([0], tf.float32)

        texts, scores = tf.cond(tf.size(rows) > 0, search, nothing)
        # Row i of the batch takes result position[i], or the trailing "" / 0 when it had no pieces.
        position = tf.where(has_pieces, tf.cumsum(tf.cast(has_pieces, tf.int32)) - 1, tf.size(rows))
        translation = tf.gather(tf.concat([texts, [""]], 0), position)
        score = tf.gather(tf.concat([scores, [0.0]], 0), position)
        return {"translation": tf.identity(translation, name="translation"),
                "score": tf.identity(score, name="score")}

    def with_eos(pieces):
        """int32 ragged [batch, (pieces)] -> int32 [batch, longest + 1], ``pieces + [EOS]`` padded."""
        eos = tf.fill([pieces.nrows(), 1], tf.constant(EOS_ID, tf.int32))
        return tf.concat([pieces, tf.RaggedTensor.from_tensor(eos)], axis=1).to_tensor(default_value=PAD_ID)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text"),
                                  tf.TensorSpec([None], tf.string, name="translation")], autograph=False)
    def score(text, translation):
        """text, translation: string [batch] -> log_prob, score: float32 [batch] (as
        ``translate.py --score``: a source without any subword is read as ``[EOS]``)."""
        source = with_eos(module.source_tokenizer.tokenize(text)[:, : max_input_length - 1])
        log_probs, lengths = forced_log_probs(model, source, with_eos(module.target_tokenizer.tokenize(translation)))
        return {"log_prob": tf.identity(log_probs, name="log_prob"),
                "score": tf.identity(log_probs / penalty(lengths, length_penalty), name="score")}

    module.translate = translate
    module.score = score
    return module


def export(model_dir, output, version=1, beam_size=None, length_penalty=None, max_length_ratio=None,
           overwrite=False, weights=None):
    """Writes the SavedModel of ``model_dir`` (a directory, or a list of them for an ensemble with
    ``weights``) to ``output/version``; returns that path."""
    model_dirs = [model_dir] if isinstance(model_dir, str) else list(model_dir)
    configs = [read_model_config(path) for path in model_dirs]
    check_shared_tokenizers(model_dirs, configs)
    check_ensemble_weights(weights, model_dirs)
    config = configs[0]
    target = os.path.join(output, str(version))
    if os.path.exists(target) and not overwrite:
        raise UserError(f"{target}: already exists (choose another --version, or --overwrite to replace it)")
    tcfg = config.translate
    beam_size = beam_size or tcfg.beam_size
    length_penalty = tcfg.length_penalty if length_penalty is None else length_penalty
    max_length_ratio = max_length_ratio or tcfg.max_length_ratio
    tf = import_tensorflow()
    from seq2seq.model_dir import load_decoder

    _, tokenizer, model = load_decoder(model_dirs, weights)
    module = build_module(model, tokenizer, beam_size, length_penalty, max_length_ratio, tcfg.min_output_length,
                          tcfg.max_input_length)
    os.makedirs(output, exist_ok=True)
    # Written beside the target, then renamed: a server watching OUTPUT never sees half a model.
    staging = tempfile.mkdtemp(prefix=f".{version}.", dir=output)
    try:
        tf.saved_model.save(module, staging, signatures={SIGNATURE: module.translate, SCORE_SIGNATURE: module.score})
        if os.path.exists(target):
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging)
    return target


def main(argv=None):
    args = parse_args(argv)
    require(args, positive=("beam_size", "max_length_ratio"), non_negative=("version", "length_penalty"))
    path = export(args.model, args.output, args.version, args.beam_size, args.length_penalty,
                  args.max_length_ratio, args.overwrite, args.weights)
    print(f"exported {' + '.join(args.model)} to {path} (signatures {SIGNATURE}: text -> translation, score; "
          f"{SCORE_SIGNATURE}: text, translation -> log_prob, score)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(run_cli(main))
