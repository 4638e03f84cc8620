import pytest

from seq2seq.config import Config, config_from_dict, load_config, save_config
from seq2seq.errors import ConfigError


def test_defaults_fill_missing_keys():
    config = config_from_dict({"model": {"units": 128}})
    assert config.model.units == 128
    assert config.model.embedding_dim == Config().model.embedding_dim
    assert config.training.seed == 1234


def test_set_overrides_by_dotted_path_with_yaml_values():
    config = config_from_dict({}, ["training.max_steps=200", "model.cell=lstm", "training.learning_rate=5e-4",
                                   "model.bidirectional=false", "training.max_steps=300"])
    assert config.training.max_steps == 300
    assert config.model.cell == "lstm"
    assert config.training.learning_rate == pytest.approx(5e-4)
    assert config.model.bidirectional is False


def test_set_overrides_leave_the_callers_values_as_they_were():
    values = {"training": {"max_steps": 100}}
    assert config_from_dict(values, ["training.max_steps=7", "model.units=32"]).training.max_steps == 7
    assert values == {"training": {"max_steps": 100}}
    assert config_from_dict(values).training.max_steps == 100


def test_unknown_key_names_its_dotted_path():
    with pytest.raises(ConfigError, match=r"unknown config key model\.hidden_size"):
        config_from_dict({"model": {"hidden_size": 3}})
    with pytest.raises(ConfigError, match=r"unknown config key optimizer"):
        config_from_dict({"optimizer": {}})


def test_unknown_set_key_is_rejected():
    with pytest.raises(ConfigError, match=r"--set training\.max_step"):
        config_from_dict({}, ["training.max_step=3"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        config_from_dict({}, ["training.max_steps"])


@pytest.mark.parametrize("values, path", [
    ({"model": {"units": "many"}}, "model.units"),
    ({"model": {"units": 0}}, "model.units"),
    ({"model": {"dropout": 1.0}}, "model.dropout"),
    ({"model": {"word_dropout": -0.1}}, "model.word_dropout"),
    ({"model": {"word_dropout": 1.0}}, "model.word_dropout"),
    ({"model": {"cell": "transformer"}}, "model.cell"),
    ({"training": {"max_steps": 2.5}}, "training.max_steps"),
    ({"tokenizer": {"joint": "yes"}}, "tokenizer.joint"),
    ({"training": {"label_smoothing": -0.1}}, "training.label_smoothing"),
    ({"training": {"rdrop": -1}}, "training.rdrop"),
    ({"training": {"lr_decay_factor": 0}}, "training.lr_decay_factor"),
    ({"training": {"min_learning_rate": 0}}, "training.min_learning_rate"),
    ({"training": {"average_checkpoints": -1}}, "training.average_checkpoints"),
    ({"model": {"tie_embeddings": "yes"}}, "model.tie_embeddings"),
    ({"translate": {"max_input_length": 1}}, "translate.max_input_length"),
    ({"model": {"dropout_placement": "everywhere"}}, "model.dropout_placement"),
    ({"model": {"bridge": "first"}}, "model.bridge"),
    ({"model": {"embedding_stddev": 0}}, "model.embedding_stddev"),
    ({"training": {"lr_schedule": "linear"}}, "training.lr_schedule"),
    ({"training": {"warmup_steps": -1}}, "training.warmup_steps"),
    ({"training": {"bfloat16": True, "mixed_precision": True}}, "training.bfloat16"),
    ({"model": {"output_bfloat16": "sometimes"}}, "model.output_bfloat16"),
    ({"model": {"recurrent_bfloat16": 1}}, "model.recurrent_bfloat16"),
])
def test_wrong_types_and_impossible_values_name_the_key(values, path):
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
        config_from_dict(values)


@pytest.mark.parametrize("key", ["output_bfloat16", "recurrent_bfloat16"])
@pytest.mark.parametrize("value", [True, False, "auto"])
def test_bfloat16_keys_are_true_false_or_auto(key, value):
    assert getattr(config_from_dict({"model": {key: value}}).model, key) == value
    assert getattr(config_from_dict({}, [f"model.{key}={str(value).lower()}"]).model, key) == value


def test_save_and_load_round_trip(tmp_path):
    config = config_from_dict({"model": {"cell": "lstm", "attention_units": 32}}, ["training.max_steps=7"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


def test_load_config_reports_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  units: [1\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
