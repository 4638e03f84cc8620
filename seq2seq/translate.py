"""Translation of lines and files: batching by length, order kept, metrics via sacrebleu.

Exactly one output line per input line, in input order: an empty or whitespace-only line gives
an empty line, and every other line one translation. Input is read in chunks, so a large file
or a pipe is translated with bounded memory and output starts before the input ends.
"""

import itertools

import numpy as np
import sacrebleu

from seq2seq.dataset import pad
from seq2seq.search import Searcher

CHUNK_LINES = 4096  # input lines sorted and translated together


class Translator:
    """Translates lists of sentences with one model; the search is compiled once."""

    def __init__(self, model, tokenizer, translate_config):
        self.model, self.tokenizer, self.config = model, tokenizer, translate_config
        self.searcher = Searcher(model, translate_config.max_length_ratio, translate_config.min_output_length)

    def translate(self, lines, batch_size=None):
        """Translates ``lines`` (list of str); returns a list of str of the same length and order."""
        batch_size = batch_size or self.config.batch_size
        outputs = [""] * len(lines)
        todo = [i for i, line in enumerate(lines) if line.strip()]
        encoded = self.tokenizer.encode_source([lines[i] for i in todo])
        # Sorting by length keeps padding low; outputs go back to their input positions.
        order = sorted(range(len(todo)), key=lambda k: len(encoded[k]))
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            tokens, _, _ = self.searcher(pad([encoded[k] for k in chunk]))
            for k, text in zip(chunk, self.tokenizer.decode_target(np.asarray(tokens))):
                outputs[todo[k]] = text
        return outputs

    def translate_stream(self, lines, write, batch_size=None):
        """Translates an iterable of lines chunk by chunk, calling ``write(text)`` for each output line.

        Returns the list of translations (for scoring).
        """
        translations = []
        lines = iter(lines)
        while True:
            chunk = [line.rstrip("\r\n") for line in itertools.islice(lines, CHUNK_LINES)]
            if not chunk:
                return translations
            for text in self.translate(chunk, batch_size):
                write(text)
                translations.append(text)


def score(hypotheses, references):
    """Corpus BLEU and chrF of detokenized ``hypotheses`` against one reference each.

    Returns two lines, sacrebleu's scores with their signatures, and the BLEU score object.
    """
    bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
    bleu_score = bleu.corpus_score(hypotheses, [references])
    chrf_score = chrf.corpus_score(hypotheses, [references])
    lines = [bleu_score.format(signature=str(bleu.get_signature())),
             chrf_score.format(signature=str(chrf.get_signature()))]
    return lines, bleu_score, chrf_score
