"""Experiment configuration: one dataclass per section, with every default in one place.

A YAML file names only the keys it changes; ``load_config`` fills in the rest, applies
``--set section.key=value`` overrides, and rejects unknown keys, wrong types and impossible
values with the key's dotted path. The resolved config is saved into the model directory
(``config.yaml``) so that the directory alone is enough to translate, export or resume.
"""

import copy
import dataclasses
import os
import typing
from dataclasses import dataclass, field

import yaml

from seq2seq.errors import ConfigError

BOOL_OR_AUTO = typing.Union[bool, typing.Literal["auto"]]  # a key that is true, false or auto


@dataclass
class DataConfig:
    train_source: str = "data/multi30k/train.de"
    train_target: str = "data/multi30k/train.en"
    valid_source: str = "data/multi30k/val.de"
    valid_target: str = "data/multi30k/val.en"
    # One file of source<TAB>target lines instead of the two above (which are then not used).
    # Any corpus file may be gzip-compressed (name ending in .gz).
    train: typing.Optional[str] = None
    valid: typing.Optional[str] = None


@dataclass
class TokenizerConfig:
    vocab_size: int = 8000
    joint: bool = True  # one SentencePiece model for both sides, else one per side
    model_type: str = "unigram"  # unigram | bpe | word | char (SentencePiece model types)
    character_coverage: float = 1.0
    max_sentences: int = 200_000  # SentencePiece trains on a random sample of at most this many lines
    # Subword regularization of the training batches (Kudo 2018; BPE-dropout for bpe models):
    # unigram: inverse temperature of the sampled segmentations; bpe: the merge dropout rate.
    # 0: off (the one best segmentation). Validation, translation and export never sample.
    sampling_alpha: float = 0.0
    nbest_size: int = -1  # unigram: sample among the n best segmentations; -1: among all of them


@dataclass
class ModelConfig:
    cell: str = "gru"  # gru | lstm | rnn
    embedding_dim: int = 256
    units: int = 256
    encoder_layers: int = 1
    decoder_layers: int = 1
    bidirectional: bool = True
    attention: str = "bahdanau"
    attention_units: typing.Optional[int] = None  # defaults to `units`
    input_feeding: bool = True  # feed the previous attentional vector into the decoder
    dropout: float = 0.3
    # attention_input: on the embeddings, between stacked recurrent layers and on the attentional
    # layer's input [h; context] (JoeyNMT's placement); all_outputs: on the embeddings, after every
    # recurrent layer (the top ones too) and on the attentional vector before the output layer.
    # attention_input learns faster; the comparison is in docs/benchmarks.md.
    dropout_placement: str = "attention_input"
    # Word dropout: in training, each source and target input token's embedding is zeroed whole
    # with this probability (Sennrich and Zhang 2019), before the dropout above.
    word_dropout: float = 0.0
    # Variational dropout (Gal and Ghahramani 2016): each dropout over a sequence (on the
    # embeddings, after the recurrent layers, on the attentional layer's input or output) draws
    # one mask per sentence, shared by all its time steps, instead of one per step.
    variational_dropout: bool = False
    # Layer normalization (Ba et al. 2016) of each recurrent cell's input and recurrent
    # projections, gate by gate (seq2seq/recurrent.py).
    layer_norm: bool = False
    embedding_stddev: float = 1.0  # embeddings start N(0, stddev²)
    bridge: str = "mean"  # the decoder's initial state from the encoder outputs' mean | last states
    tie_embeddings: bool = False  # the output layer reuses the target embedding matrix
    # The output layer's matmul in bfloat16 (float32 weights), in training and in search: true,
    # false, or auto (where the CPU has AVX512_BF16 or AMX; seq2seq/precision.py).
    output_bfloat16: BOOL_OR_AUTO = False
    # The encoder's and the decoder's matmuls before the output layer in bfloat16 (float32 weights
    # and states), in training and in search: true, false, or auto (seq2seq/precision.py).
    recurrent_bfloat16: BOOL_OR_AUTO = False
    # The output layer's rows: every target piece of the SentencePiece model (all), or only the
    # pieces of the training targets' best segmentation and the special ones (observed; kept in
    # the model directory as output_vocabulary.txt, seq2seq/vocabulary.py).
    output_vocabulary: str = "all"


@dataclass
class TrainingConfig:
    batch_tokens: int = 4096  # target tokens per batch (padding included)
    max_length: int = 100  # pairs with more tokens on either side are dropped
    epochs: int = 20
    max_steps: typing.Optional[int] = None
    learning_rate: float = 0.001
    lr_schedule: str = "plateau"  # plateau (decay on plateau) | cosine (down to min_learning_rate at the last step)
    warmup_steps: int = 0  # linear warm-up from 0 to learning_rate over the first steps
    lr_decay_factor: float = 0.5  # plateau: the learning rate is multiplied by this ...
    lr_decay_patience: int = 2  # ... after this many validations in a row without a better BLEU
    min_learning_rate: float = 1e-5  # decay never goes below this
    average_checkpoints: int = 0  # at the end, average the last N validated models; keep them if better
    clip_norm: float = 1.0
    label_smoothing: float = 0.1
    rdrop: float = 0.0  # R-Drop's α: each batch runs twice, α/4 × their symmetric KL added (0: off)
    validate_every: int = 500  # steps
    patience: int = 5  # validations without a better BLEU before stopping
    validation_beam_size: int = 1  # beam size of the validation translations (1: greedy)
    keep_checkpoints: int = 3
    shuffle_buffer: int = 30_000  # sentence pairs (all of Multi30k); memory grows with it, not with the corpus
    log_every: int = 50  # steps between progress lines in train.log
    seed: int = 1234
    distribution: str = "none"  # none (one device) | mirrored (all local GPUs) | multi_worker (TF_CONFIG cluster)
    mixed_precision: bool = False  # Keras mixed_float16 with loss scaling (for GPUs)
    parallel_parts: int = 0  # parts of each batch computed at once, one thread each (0: 2 on a CPU with 2+ cores)
    bfloat16: bool = False  # Keras mixed_bfloat16 (CPUs with AVX-512 BF16 or AMX, recent GPUs); no loss scaling


@dataclass
class TranslateConfig:
    beam_size: int = 5
    length_penalty: float = 0.6
    max_length_ratio: float = 2.0
    batch_size: int = 64  # sentences
    min_output_length: int = 10  # the decoding limit is max(min_output_length, ratio * source length)
    max_input_length: int = 250  # longer source lines (in subwords, EOS included) are cut to this length


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    translate: TranslateConfig = field(default_factory=TranslateConfig)

    def to_dict(self):
        return dataclasses.asdict(self)


_CHOICES = {
    "tokenizer.model_type": ("unigram", "bpe", "word", "char"),
    "model.cell": ("gru", "lstm", "rnn"),
    "model.attention": ("bahdanau",),
    "model.dropout_placement": ("attention_input", "all_outputs"),
    "model.bridge": ("mean", "last"),
    "model.output_vocabulary": ("all", "observed"),
    "training.distribution": ("none", "mirrored", "multi_worker"),
    "training.lr_schedule": ("plateau", "cosine"),
}


def _check_type(path, value, annotation):
    """Returns ``value`` converted to ``annotation`` or raises a ConfigError naming ``path``."""
    if annotation == BOOL_OR_AUTO:
        if isinstance(value, bool) or value == "auto":
            return value
        raise ConfigError(f"config key {path}: expected true, false or auto, got {value!r}")
    optional = typing.get_origin(annotation) is typing.Union
    if optional:
        if value is None:
            return None
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 5e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
    expected = annotation.__name__ + (" or null" if optional else "")
    raise ConfigError(f"config key {path}: expected {expected}, got {value!r}")


def _build(cls, values, prefix):
    if not isinstance(values, dict):
        raise ConfigError(f"config key {prefix.rstrip('.') or '<root>'}: expected a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        path = prefix + str(key)
        if key not in fields:
            raise ConfigError(f"unknown config key {path} (known keys: {', '.join(sorted(fields))})")
        annotation = typing.get_type_hints(cls)[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = _build(annotation, value if value is not None else {}, path + ".")
        else:
            kwargs[key] = _check_type(path, value, annotation)
    return cls(**kwargs)


def _validate(config):
    def require(condition, path, message):
        if not condition:
            value = config
            for part in path.split("."):
                value = getattr(value, part)
            raise ConfigError(f"config key {path}: {message}, got {value!r}")

    for path, choices in _CHOICES.items():
        section, key = path.split(".")
        require(getattr(getattr(config, section), key) in choices, path, f"must be one of {', '.join(choices)}")
    t, m, tr, tl = config.tokenizer, config.model, config.training, config.translate
    require(t.vocab_size >= 16, "tokenizer.vocab_size", "must be at least 16")
    require(0 < t.character_coverage <= 1, "tokenizer.character_coverage", "must be in (0, 1]")
    require(t.max_sentences > 0, "tokenizer.max_sentences", "must be positive")
    require(t.sampling_alpha >= 0, "tokenizer.sampling_alpha", "must be non-negative (0: no sampling)")
    require(t.sampling_alpha == 0 or t.model_type in ("unigram", "bpe"), "tokenizer.sampling_alpha",
            f"samples segmentations of unigram and bpe models only, not of {t.model_type} models (set 0)")
    require(t.model_type != "bpe" or t.sampling_alpha < 1, "tokenizer.sampling_alpha",
            "is the merge dropout rate of a bpe model: must be below 1")
    require(t.nbest_size == -1 or 2 <= t.nbest_size <= 512, "tokenizer.nbest_size",
            "must be -1 (sample among all segmentations) or between 2 and 512")
    for key in ("embedding_dim", "units", "encoder_layers", "decoder_layers"):
        require(getattr(m, key) > 0, f"model.{key}", "must be positive")
    require(m.attention_units is None or m.attention_units > 0, "model.attention_units", "must be positive")
    require(0 <= m.dropout < 1, "model.dropout", "must be in [0, 1)")
    require(0 <= m.word_dropout < 1, "model.word_dropout", "must be in [0, 1)")
    require(m.output_vocabulary == "all" or t.sampling_alpha == 0, "model.output_vocabulary",
            "observed keeps the pieces of the best segmentation only, which sampled segmentations "
            "(tokenizer.sampling_alpha > 0) leave: use all")
    require(m.embedding_stddev > 0, "model.embedding_stddev", "must be positive")
    for key in ("batch_tokens", "max_length", "epochs", "validate_every", "patience", "validation_beam_size",
                "keep_checkpoints", "shuffle_buffer", "log_every"):
        require(getattr(tr, key) > 0, f"training.{key}", "must be positive")
    require(tr.max_steps is None or tr.max_steps > 0, "training.max_steps", "must be positive or null")
    require(tr.learning_rate > 0, "training.learning_rate", "must be positive")
    require(tr.warmup_steps >= 0, "training.warmup_steps", "must be non-negative (0: no warm-up)")
    require(tr.parallel_parts >= 0, "training.parallel_parts", "must be non-negative (0: automatic)")
    require(tr.parallel_parts <= 1 or (tr.distribution == "none" and not tr.mixed_precision),
            "training.parallel_parts", "above 1 needs training.distribution=none and no mixed_precision")
    require(not (tr.bfloat16 and tr.mixed_precision), "training.bfloat16",
            "cannot be combined with training.mixed_precision (float16); choose one")
    require(0 < tr.lr_decay_factor <= 1, "training.lr_decay_factor", "must be in (0, 1] (1: no decay)")
    require(tr.lr_decay_patience > 0, "training.lr_decay_patience", "must be positive")
    require(tr.min_learning_rate > 0, "training.min_learning_rate", "must be positive")
    require(tr.average_checkpoints >= 0, "training.average_checkpoints", "must be non-negative (0: off)")
    require(tr.clip_norm > 0, "training.clip_norm", "must be positive")
    require(0 <= tr.label_smoothing < 1, "training.label_smoothing", "must be in [0, 1)")
    require(tr.rdrop >= 0, "training.rdrop", "must be non-negative (0: off)")
    require(tr.batch_tokens >= tr.max_length + 1, "training.batch_tokens",
            f"must hold at least one sentence of training.max_length + 1 = {tr.max_length + 1} tokens")
    require(tl.beam_size > 0, "translate.beam_size", "must be positive")
    require(tl.length_penalty >= 0, "translate.length_penalty", "must be non-negative")
    require(tl.max_length_ratio > 0, "translate.max_length_ratio", "must be positive")
    require(tl.batch_size > 0, "translate.batch_size", "must be positive")
    require(tl.min_output_length > 0, "translate.min_output_length", "must be positive")
    require(tl.max_input_length > 1, "translate.max_input_length", "must be at least 2 (a subword and EOS)")


def parse_override(text):
    """Parses ``section.key=value`` (the value in YAML syntax) into ``(["section", "key"], value)``."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, for example training.max_steps=200")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(values, overrides):
    """Applies ``--set`` overrides to a nested dict of config values, in place."""
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    for text in overrides:
        parts, value = parse_override(text)
        path = ".".join(parts)
        if len(parts) != 2 or parts[0] not in sections:
            raise ConfigError(f"--set {path}: unknown config key (expected SECTION.KEY with SECTION one of "
                              f"{', '.join(sections)})")
        section_fields = {f.name for f in dataclasses.fields(typing.get_type_hints(Config)[parts[0]])}
        if parts[1] not in section_fields:
            raise ConfigError(f"--set {path}: unknown config key (known keys of {parts[0]}: "
                              f"{', '.join(sorted(section_fields))})")
        section = values.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise ConfigError(f"config key {parts[0]}: expected a mapping, got {section!r}")
        section[parts[1]] = value
    return values


def config_from_dict(values, overrides=()):
    """Builds a validated Config from nested dict ``values`` (left as it is) and ``--set`` ``overrides``."""
    values = apply_overrides(copy.deepcopy(values or {}), overrides)
    config = _build(Config, values, "")
    _validate(config)
    return config


def read_yaml(path):
    """Reads a YAML mapping from ``path``; a missing or malformed file is a ConfigError."""
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config file ({error.strerror})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise ConfigError(f"{where}: invalid YAML ({getattr(error, 'problem', error)})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections, got {type(values).__name__}")
    return values


def load_config(path, overrides=()):
    """Loads the YAML config at ``path`` with ``--set`` ``overrides`` applied, validated."""
    values = read_yaml(path)  # its errors name the file already
    try:
        return config_from_dict(values, overrides)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


# Keys of the model and tokenizer sections that change how training batches are segmented, not
# the model: a resumed or fine-tuning run may set them as it likes.
SEGMENTATION_KEYS = ("tokenizer.sampling_alpha", "tokenizer.nbest_size")


def fine_tuning_config(path, overrides, trained, trained_dir):
    """The config of a run that fine-tunes the model of ``trained_dir`` (its Config: ``trained``).

    The ``data``, ``training`` and ``translate`` sections come from the YAML file at ``path`` with
    the ``--set`` ``overrides``; the ``model`` and ``tokenizer`` sections are the trained model's
    (but for ``SEGMENTATION_KEYS``). A key of those two sections that the file or an override sets
    to another value than the trained model's is a ConfigError naming it.
    """
    values = read_yaml(path)
    try:
        values = apply_overrides(values, overrides)
        given = config_from_dict(values)
        for section in ("model", "tokenizer"):
            merged = dataclasses.asdict(getattr(trained, section))
            for key in values.get(section) or {}:
                new, old = getattr(getattr(given, section), key), merged[key]
                if f"{section}.{key}" in SEGMENTATION_KEYS:
                    merged[key] = new
                elif new != old:
                    raise ConfigError(f"{section}.{key}={new!r} differs from the model it fine-tunes "
                                      f"({trained_dir}: {old!r}); fine-tuning keeps the trained model's {section} "
                                      "section, so leave the key out")
            values[section] = merged
        return config_from_dict(values)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def save_config(config, path):
    """Writes the fully resolved ``config`` to ``path`` as YAML (atomically)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        yaml.safe_dump(config.to_dict(), f, sort_keys=False)
    os.replace(tmp, path)


def languages(config):
    """The source and target language codes: the suffixes of the training files (train.de -> de,
    train.de.gz -> de), or with ``data.train`` set the pair in its name (train.de-en.tsv -> de, en)."""
    def suffix(path):
        return os.path.splitext(path.removesuffix(".gz"))[1].lstrip(".")

    if config.data.train:
        pair = suffix(os.path.splitext(config.data.train.removesuffix(".gz"))[0])
        if pair.count("-") != 1:
            raise ConfigError(f"config key data.train: cannot tell the languages from {config.data.train!r} "
                              "(name it like train.de-en.tsv)")
        return tuple(pair.split("-"))
    return suffix(config.data.train_source), suffix(config.data.train_target)


def main(argv=None):
    """``python -m seq2seq.config CONFIG`` prints the config's source and target languages (for the Makefile)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("config", help="YAML experiment config")
    print(*languages(load_config(parser.parse_args(argv).config)))


if __name__ == "__main__":
    import sys

    from seq2seq.errors import run_cli

    sys.exit(run_cli(main))
