"""Translation of lines and files: batching by length, order kept, metrics via sacrebleu.

Exactly one output line per input line, in input order: an empty or whitespace-only line gives
an empty line, and every other line one translation. Input is read in chunks, so a large file
or a pipe is translated with bounded memory and output starts before the input ends.
"""

import itertools
from collections import namedtuple

import numpy as np
import sacrebleu

from seq2seq.dataset import pad
from seq2seq.search import Searcher
from seq2seq.tokenizer import EOS_ID

CHUNK_LINES = 4096  # input lines sorted and translated together

Hypothesis = namedtuple("Hypothesis", "text score source_pieces target_pieces attention")
Hypothesis.__doc__ = """One translation: detokenized ``text``, its length-normalized ``score``; with
attention requested, the source and output subword pieces (EOS included) and the attention
weights, float [len(target_pieces), len(source_pieces)] (else None, None, None)."""


class Translator:
    """Translates lists of sentences with one model; the search is compiled once.

    ``beam_size`` defaults to ``translate.beam_size``; 1 is greedy decoding. ``n_best``
    hypotheses are kept per sentence (at most ``beam_size``).
    """

    def __init__(self, model, tokenizer, translate_config, beam_size=None, n_best=1):
        self.model, self.tokenizer, self.config = model, tokenizer, translate_config
        self.beam_size = beam_size or translate_config.beam_size
        self.n_best = n_best
        self.searcher = Searcher(model, self.beam_size, translate_config.length_penalty,
                                 translate_config.max_length_ratio, translate_config.min_output_length, n_best)

    def warm_up(self):
        """Compiles the search (one trace serves every batch shape) on a one-token source."""
        self.searcher(np.full((1, 1), EOS_ID, np.int32))

    def hypotheses(self, lines, batch_size=None, attention=False):
        """The ``n_best`` best translations of each line, best first, as Hypothesis tuples.

        Returns a list with one list per input line; an empty or whitespace-only line gets one
        empty translation with score 0. ``attention=True`` fills in the pieces and attention weights.
        """
        batch_size = batch_size or self.config.batch_size
        outputs = [[Hypothesis("", 0.0, [], [], np.zeros((0, 0)) if attention else None)] for _ in lines]
        todo = [i for i, line in enumerate(lines) if line.strip()]
        encoded = self.tokenizer.encode_source([lines[i] for i in todo])
        # Sorting by length keeps padding low; outputs go back to their input positions.
        order = sorted(range(len(todo)), key=lambda k: len(encoded[k]))
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            result = self.searcher(pad([encoded[k] for k in chunk]))
            tokens, scores = np.asarray(result.tokens), np.asarray(result.scores)
            lengths = np.asarray(result.lengths)
            weights = np.asarray(result.attention) if attention else None
            for row, k in enumerate(chunk):
                texts = self.tokenizer.decode_target(tokens[row, : self.n_best])
                outputs[todo[k]] = [
                    Hypothesis(text, float(scores[row, j]), *(self._pieces(encoded[k], tokens[row, j],
                               weights[row, j], lengths[row, j]) if attention else (None, None, None)))
                    for j, text in enumerate(texts)]
        return outputs

    def _pieces(self, source_ids, target_ids, weights, length):
        source = [self.tokenizer.source.id_to_piece(int(i)) for i in source_ids]
        target = [self.tokenizer.target.id_to_piece(int(i)) for i in target_ids[:length]]
        return source, target, weights[:length, : len(source_ids)]

    def translate(self, lines, batch_size=None):
        """Translates ``lines`` (list of str); returns the best translations, same length and order."""
        return [best[0].text for best in self.hypotheses(lines, batch_size)]

    def translate_stream(self, lines, write, batch_size=None, attention=False):
        """Translates an iterable of lines chunk by chunk, calling ``write(index, hypotheses)`` per line.

        ``hypotheses`` is the line's list of Hypothesis, best first. Returns the list of best
        translations (for scoring).
        """
        translations = []
        lines = iter(lines)
        while True:
            chunk = [line.rstrip("\r\n") for line in itertools.islice(lines, CHUNK_LINES)]
            if not chunk:
                return translations
            for hypotheses in self.hypotheses(chunk, batch_size, attention):
                write(len(translations), hypotheses)
                translations.append(hypotheses[0].text)


def alignment(hypothesis):
    """Pharaoh-format alignment ``"i-j ..."``: for each output piece j (EOS excluded), the source
    piece i it attends to most."""
    pieces = hypothesis.target_pieces
    count = len(pieces) - 1 if pieces and pieces[-1] == "</s>" else len(pieces)
    return " ".join(f"{int(np.argmax(hypothesis.attention[j]))}-{j}" for j in range(count))


def score(hypotheses, references):
    """Corpus BLEU and chrF of detokenized ``hypotheses`` against one reference each.

    Returns two lines, sacrebleu's scores with their signatures, and the BLEU and chrF objects.
    """
    bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
    bleu_score = bleu.corpus_score(hypotheses, [references])
    chrf_score = chrf.corpus_score(hypotheses, [references])
    lines = [bleu_score.format(signature=str(bleu.get_signature())),
             chrf_score.format(signature=str(chrf.get_signature()))]
    return lines, bleu_score, chrf_score
