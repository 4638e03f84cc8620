"""Sampled segmentations of training text that a seed fixes (subword regularization, Kudo 2018).

tensorflow-text's SentencePiece op samples segmentations itself, from SentencePiece's generator,
which it seeds from ``std::random_device``: its samples cannot be repeated. For a unigram model
with ``nbest_size`` of 2 or more, SentencePiece's sampling is simple enough to do in the graph:
take the ``nbest_size`` best segmentations of a line (the op, deterministic) and draw one with
probability proportional to ``P(segmentation) ** alpha`` (SentencePiece's ``SampleEncode`` for
``nbest_size`` > 1; Kudo 2018, §3.1). ``NBestSampler`` draws with TensorFlow's stateless
generator from a seed that the caller derives from ``training.seed``, so that a run repeats.
Sampling among all segmentations (``nbest_size`` -1) and BPE-dropout stay with the op.
"""

import tensorflow as tf

from seq2seq.tokenizer import UNK_ID

UNK_PENALTY = 10.0  # SentencePiece's unigram lattice scores an unknown piece the lowest score minus this


def _model_proto(model_path):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    with open(model_path, "rb") as f:
        proto.ParseFromString(f.read())
    return proto


def seeded(model_path, nbest_size):
    """Whether ``NBestSampler`` samples this SentencePiece model's segmentations (a unigram model,
    ``nbest_size`` 2 or more); else tensorflow-text's op does, without a seed."""
    if nbest_size < 2:
        return False
    spec = _model_proto(model_path).trainer_spec
    return spec.model_type == spec.UNIGRAM


def samplers(tokenizer, sampling_alpha, nbest_size):
    """The source and target samplers of a ``Tokenizer``'s models: functions ``(lines string [n],
    seed int64 [2]) -> int32 ragged [n, (pieces)]``, an ``NBestSampler``'s where ``seeded``, else
    tensorflow-text's op, which ignores the seed."""
    paths = (tokenizer.source_model_path, tokenizer.target_model_path)
    if not all(seeded(path, nbest_size) for path in paths):
        ops = tokenizer.in_graph(sampling_alpha, nbest_size)  # made only where one side needs them

    def sampler(side):
        if seeded(paths[side], nbest_size):
            return NBestSampler(paths[side], nbest_size, sampling_alpha).tokenize
        return lambda lines, seed: ops[side].tokenize(lines)

    source = sampler(0)
    return source, source if tokenizer.target is tokenizer.source else sampler(1)


def piece_log_probs(model_path):
    """Each piece's log probability in a unigram SentencePiece model as its lattice scores it:
    float32 [pieces]; the unknown piece gets the lowest score minus ``UNK_PENALTY``."""
    scores = [piece.score for piece in _model_proto(model_path).pieces]
    scores[UNK_ID] = min(scores) - UNK_PENALTY
    return tf.constant(scores, tf.float32)


class NBestSampler:
    """One of the ``nbest_size`` best segmentations of each line, drawn with probability
    proportional to ``exp(alpha * log P(segmentation))`` from a seed.

    New ones for each dataset: the op's resource does not outlive the first dataset that used it.
    """

    def __init__(self, model_path, nbest_size, alpha):
        import tensorflow_text as tf_text

        with open(model_path, "rb") as f:
            self.nbest = tf_text.SentencepieceTokenizer(model=f.read(), out_type=tf.int32, nbest_size=nbest_size,
                                                        return_nbest=True)
        self.nbest_size, self.alpha = nbest_size, alpha
        self.log_probs = piece_log_probs(model_path)

    def candidates(self, lines):
        """string [n] -> int32 ragged [n, (candidates), (pieces)], each line's best segmentations,
        best first (between 1 and ``nbest_size`` of them: a short line may have fewer)."""
        flat = self.nbest.tokenize(lines)  # [candidates of all lines, (pieces)]: which line's, unsaid
        n = tf.shape(lines, out_type=flat.row_splits.dtype)[0]

        def one_line_at_a_time():
            spec = tf.RaggedTensorSpec([None, None], tf.int32, 1, flat.row_splits.dtype)
            return tf.map_fn(lambda line: self.nbest.tokenize(line[None]), lines, fn_output_signature=spec)

        # Every line has its nbest_size segmentations exactly when there are n * nbest_size of them.
        return tf.cond(tf.equal(flat.nrows(), n * self.nbest_size),
                       lambda: tf.RaggedTensor.from_row_lengths(flat, tf.fill([n], tf.cast(self.nbest_size, n.dtype))),
                       one_line_at_a_time)

    def log_prob(self, candidates):
        """int32 ragged [n, (candidates), (pieces)] -> each segmentation's log probability,
        float32 ragged [n, (candidates)]."""
        return tf.reduce_sum(candidates.with_flat_values(tf.gather(self.log_probs, candidates.flat_values)), axis=-1)

    def tokenize(self, lines, seed):
        """lines: string [n]; seed: int32 or int64 [2], a stateless seed -> int32 ragged [n, (pieces)]."""
        candidates = self.candidates(lines)
        logits = (self.alpha * self.log_prob(candidates)).to_tensor(float("-inf"))  # [n, max candidates]
        choice = tf.random.stateless_categorical(logits, 1, seed, dtype=candidates.row_splits.dtype)[:, 0]
        return tf.gather(candidates.values, candidates.row_splits[:-1] + choice)
