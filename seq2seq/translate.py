"""Translation of lines and files: batching by length, order kept, metrics via sacrebleu.

Exactly one output line per input line, in input order: a line without any subword (empty,
blank, or only characters SentencePiece drops) gives an empty line, and every other line one
translation. A line of more than ``translate.max_input_length`` subwords is truncated to that
length (the caller is told which). Input is read in chunks of the lines that are there (up to
``CHUNK_LINES``): a file or a burst of lines is translated in large sorted batches with bounded
memory, and a line that arrives alone on an open pipe or a terminal is answered at once.
"""

import codecs
import concurrent.futures
import io
import os
import select
import stat
from collections import namedtuple

import numpy as np
import sacrebleu

from seq2seq.dataset import pad
from seq2seq.search import Searcher
from seq2seq.tokenizer import EOS_ID

CHUNK_LINES = 4096  # input lines sorted and translated together
PARALLEL_BATCHES = 2  # batches searched at once (docs/benchmarks.md measures 1 against 2)

Hypothesis = namedtuple("Hypothesis", "text score source_pieces target_pieces attention")
Hypothesis.__doc__ = """One translation: detokenized ``text``, its length-normalized ``score``; with
attention requested, the source and output subword pieces (EOS included) and the attention
weights, float [len(target_pieces), len(source_pieces)] (else None, None, None)."""


def encode_sources(tokenizer, lines, limit):
    """Source ids (``pieces + [EOS]``) of each line, cut to ``limit`` ids; returns ``(ids,
    truncated)`` with ``truncated`` the indices of the lines that were cut."""
    encoded = tokenizer.encode_source(lines)
    truncated = [i for i, ids in enumerate(encoded) if len(ids) > limit]
    for i in truncated:
        encoded[i] = encoded[i][: limit - 1] + [EOS_ID]
    return encoded, truncated


class Translator:
    """Translates lists of sentences with one model or an ``Ensemble``; the search is compiled once.

    ``beam_size`` defaults to ``translate.beam_size``; 1 is greedy decoding. ``n_best``
    hypotheses are kept per sentence (at most ``beam_size``). With ``sampling`` (a
    ``seq2seq.sampling.Sampling``), each sentence gets ``n_best`` independent samples instead
    (``beam_size`` is ignored); a line's samples depend on ``seed`` and its line number only.
    ``parallel_batches`` batches are searched at once, each in its own thread: a search is a
    chain of small operations that leaves cores idle, which a second search in flight uses.
    """

    def __init__(self, model, tokenizer, translate_config, beam_size=None, n_best=1, sampling=None, seed=0,
                 parallel_batches=PARALLEL_BATCHES):
        self.model, self.tokenizer, self.config = model, tokenizer, translate_config
        self.parallel_batches = parallel_batches  # (the pool starts its threads when first used)
        self._pool = concurrent.futures.ThreadPoolExecutor(parallel_batches, "search") if parallel_batches > 1 else None
        self.beam_size = n_best if sampling is not None else beam_size or translate_config.beam_size
        self.n_best, self.sampling, self.seed = n_best, sampling, int(seed)
        # The attention history costs memory quadratic in the length: kept only when asked for.
        self.searchers = {with_attention: Searcher(
            model, self.beam_size, translate_config.length_penalty, translate_config.max_length_ratio,
            translate_config.min_output_length, n_best, attention=with_attention, sampling=sampling)
            for with_attention in (False, True)}

    def warm_up(self, attention=False):
        """Compiles the search (one trace serves every batch shape) on a one-token source."""
        self.searchers[attention](np.full((1, 1), EOS_ID, np.int32))

    def encode(self, lines):
        """``encode_sources`` with ``translate.max_input_length``."""
        return encode_sources(self.tokenizer, lines, self.config.max_input_length)

    def hypotheses(self, lines, batch_size=None, attention=False, truncated=None, first_line=0):
        """The ``n_best`` best translations of each line, best first, as Hypothesis tuples.

        Returns a list with one list per input line; a line without any subword gets one empty
        translation with score 0. ``attention=True`` fills in the pieces and attention weights.
        The indices of lines cut to ``max_input_length`` are appended to the list ``truncated``.
        ``first_line``: the number of ``lines[0]`` in the whole input (samples depend on it).
        """
        batch_size = batch_size or self.config.batch_size
        outputs = [[Hypothesis("", 0.0, [], [], np.zeros((0, 0)) if attention else None)] for _ in lines]
        encoded, cut = self.encode(lines)
        if truncated is not None:
            truncated.extend(cut)
        todo = [i for i, ids in enumerate(encoded) if len(ids) > 1]  # more than the EOS
        # Sorting by length keeps padding low; outputs go back to their input positions.
        order = sorted(todo, key=lambda i: len(encoded[i]))
        chunks = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]

        def search(chunk):
            return self.searchers[attention](pad([encoded[i] for i in chunk]), self.seed,
                                             [first_line + i for i in chunk])

        for chunk, result in zip(chunks, self._map(search, chunks)):
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

    def _map(self, search, chunks):
        """``map(search, chunks)``, with up to ``parallel_batches`` searches running at once (in
        order; every batch's result is the same whichever thread ran it)."""
        if self._pool is None or len(chunks) < 2:
            return map(search, chunks)
        return self._pool.map(search, chunks)

    def _pieces(self, source_ids, target_ids, weights, length):
        source = [self.tokenizer.source.id_to_piece(int(i)) for i in source_ids]
        target = [self.tokenizer.target.id_to_piece(int(i)) for i in target_ids[:length]]
        return source, target, weights[:length, : len(source_ids)]

    def translate(self, lines, batch_size=None):
        """Translates ``lines`` (list of str); returns the best translations, same length and order."""
        return [best[0].text for best in self.hypotheses(lines, batch_size)]

    def translate_stream(self, chunks, write, batch_size=None, attention=False, on_truncate=None, flush=None):
        """Translates an iterable of chunks (lists of lines, as ``line_chunks`` yields them),
        calling ``write(index, hypotheses)`` per line.

        ``hypotheses`` is the line's list of Hypothesis, best first. ``on_truncate(index)`` is
        called for each line cut to ``max_input_length``, ``flush()`` after each chunk. Returns
        the list of best translations (for scoring).
        """
        translations = []
        for chunk in chunks:
            truncated = []
            results = self.hypotheses(chunk, batch_size, attention, truncated, len(translations))
            if on_truncate is not None:
                for i in truncated:
                    on_truncate(len(translations) + i)
            for hypotheses in results:
                write(len(translations), hypotheses)
                translations.append(hypotheses[0].text)
            if flush is not None:
                flush()
        return translations


def line_chunks(binary, max_lines=CHUNK_LINES):
    """Yields the lines of a binary stream (a file, a pipe, a terminal) as lists of str, each
    list the complete lines available when it is read, at most ``max_lines`` of them.

    Waits only while no complete line is there: on a pipe or a terminal, a line that arrives
    alone is yielded alone, while lines that arrive together come in one list. Lines end at
    ``\n`` only (a lone ``\r`` or U+2028 does not start a line) and lose a trailing ``\r``;
    they are decoded as UTF-8 with invalid bytes replaced by U+FFFD and a byte order mark at
    the start of the stream dropped, so output lines match input lines one to one.
    """
    waits = _waits_for_input(binary)
    pending, partial, at_start, at_end = [], b"", True, False
    while True:
        while not at_end and len(pending) < max_lines and (not pending or not waits or _readable(binary)):
            data = binary.read1(1 << 16)  # what one read returns: blocks only when nothing is there
            if not data:
                at_end = True
                break
            *complete, partial = (partial + data).split(b"\n")
            pending.extend(complete)
        if at_end and partial:
            pending.append(partial)
            partial = b""
        if not pending:
            return
        chunk, pending = pending[:max_lines], pending[max_lines:]
        if at_start:
            chunk[0] = chunk[0].removeprefix(codecs.BOM_UTF8)
            at_start = False
        yield [line.decode("utf-8", "replace").rstrip("\r") for line in chunk]


def _waits_for_input(binary):
    """Whether reading ``binary`` can wait for data to arrive (a pipe, a terminal, a socket)."""
    try:
        return not stat.S_ISREG(os.fstat(binary.fileno()).st_mode)
    except (AttributeError, OSError, io.UnsupportedOperation):
        return False  # an in-memory stream: all of it is there


def _readable(binary):
    return bool(select.select([binary], [], [], 0)[0])


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
