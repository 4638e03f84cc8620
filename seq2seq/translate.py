"""Translation of lines and files: batching by length, order kept, metrics via sacrebleu.

Exactly one output line per input line, in input order: a line without any subword (empty,
blank, or only characters SentencePiece drops) gives an empty line, and every other line one
translation. A line of more than ``translate.max_input_length`` subwords is truncated to that
length (the caller is told which). Input is read in chunks, so a large file or a pipe is
translated with bounded memory and output starts before the input ends.
"""

import io
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
        # The attention history costs memory quadratic in the length: kept only when asked for.
        self.searchers = {with_attention: Searcher(
            model, self.beam_size, translate_config.length_penalty, translate_config.max_length_ratio,
            translate_config.min_output_length, n_best, attention=with_attention) for with_attention in (False, True)}

    def warm_up(self, attention=False):
        """Compiles the search (one trace serves every batch shape) on a one-token source."""
        self.searchers[attention](np.full((1, 1), EOS_ID, np.int32))

    def encode(self, lines):
        """Source ids (``pieces + [EOS]``) of each line, cut to ``max_input_length``; returns
        ``(ids, truncated)`` with ``truncated`` the indices of the lines that were cut."""
        limit = self.config.max_input_length
        encoded = self.tokenizer.encode_source(lines)
        truncated = [i for i, ids in enumerate(encoded) if len(ids) > limit]
        for i in truncated:
            encoded[i] = encoded[i][: limit - 1] + [EOS_ID]
        return encoded, truncated

    def hypotheses(self, lines, batch_size=None, attention=False, truncated=None):
        """The ``n_best`` best translations of each line, best first, as Hypothesis tuples.

        Returns a list with one list per input line; a line without any subword gets one empty
        translation with score 0. ``attention=True`` fills in the pieces and attention weights.
        The indices of lines cut to ``max_input_length`` are appended to the list ``truncated``.
        """
        batch_size = batch_size or self.config.batch_size
        outputs = [[Hypothesis("", 0.0, [], [], np.zeros((0, 0)) if attention else None)] for _ in lines]
        encoded, cut = self.encode(lines)
        if truncated is not None:
            truncated.extend(cut)
        todo = [i for i, ids in enumerate(encoded) if len(ids) > 1]  # more than the EOS
        # Sorting by length keeps padding low; outputs go back to their input positions.
        order = sorted(todo, key=lambda i: len(encoded[i]))
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            result = self.searchers[attention](pad([encoded[i] for i in chunk]))
            tokens, scores = np.asarray(result.tokens), np.asarray(result.scores)
            lengths = np.asarray(result.lengths)
            weights = np.asarray(result.attention) if attention else None
            for row, i in enumerate(chunk):
                texts = self.tokenizer.decode_target(tokens[row, : self.n_best])
                outputs[i] = [
                    Hypothesis(text, float(scores[row, j]), *(self._pieces(encoded[i], tokens[row, j],
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

    def translate_stream(self, lines, write, batch_size=None, attention=False, on_truncate=None, flush=None):
        """Translates an iterable of lines chunk by chunk, calling ``write(index, hypotheses)`` per line.

        ``hypotheses`` is the line's list of Hypothesis, best first. ``on_truncate(index)`` is
        called for each line cut to ``max_input_length``, ``flush()`` after each chunk. Returns
        the list of best translations (for scoring).
        """
        translations = []
        lines = iter(lines)
        while True:
            chunk = [line.rstrip("\r\n") for line in itertools.islice(lines, CHUNK_LINES)]
            if not chunk:
                return translations
            truncated = []
            results = self.hypotheses(chunk, batch_size, attention, truncated)
            if on_truncate is not None:
                for i in truncated:
                    on_truncate(len(translations) + i)
            for hypotheses in results:
                write(len(translations), hypotheses)
                translations.append(hypotheses[0].text)
            if flush is not None:
                flush()


def text_lines(binary):
    """Lines of a binary stream (a file or stdin) for translation: decoded as UTF-8 with invalid
    bytes replaced by U+FFFD, a byte order mark dropped, lines ending at ``\n`` only (a lone
    ``\r`` or U+2028 does not start a line), so output lines match input lines one to one."""
    return io.TextIOWrapper(binary, encoding="utf-8-sig", errors="replace", newline="\n")


def one_line(text):
    """``text`` safe to write as one output line: any line break in it becomes a space."""
    return text.replace("\r", " ").replace("\n", " ")


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
