# The commands a user types. Each target does the set-up it needs first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/multi30k_de_en.yaml
NAME := $(basename $(notdir $(CONFIG)))
MODEL_DIR ?= runs/$(NAME)
# Languages of the test set: the suffixes of the config's training files (train.de -> de).
LANGUAGES = $(shell $(PY) -m seq2seq.config $(CONFIG))
SRC ?= $(word 1,$(LANGUAGES))
TGT ?= $(word 2,$(LANGUAGES))
MULTI30K_MIRROR ?= ../shared/data/multi30k
export MULTI30K_MIRROR
# make install GPU=1 installs TensorFlow with its CUDA libraries.
comma := ,
EXTRAS := test$(if $(GPU),$(comma)gpu)
ARGS ?=
PYTEST_ARGS ?=
# The suite runs in TEST_WORKERS processes (pytest-xdist): most tests keep one core busy at a time.
TEST_WORKERS ?= 2

EXPORT_DIR ?= $(MODEL_DIR)/export

.PHONY: install data train translate export serve bench bench-peer bench-quality test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip==25.3
	$(VENV)/bin/pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

data: data/multi30k/.done

data/multi30k/.done: data/prepare.py
	$(PYTHON) data/prepare.py
	touch $@

train: install data
	$(PY) train.py --config $(CONFIG) --model-dir $(MODEL_DIR) $(ARGS)

translate: install data
	$(PY) translate.py --model $(MODEL_DIR) --input data/multi30k/test_2016_flickr.$(SRC) \
		--output $(MODEL_DIR)/test_2016_flickr.$(TGT).hyp --reference data/multi30k/test_2016_flickr.$(TGT) $(ARGS)

export: install
	$(PY) -m seq2seq.export --model $(MODEL_DIR) --output $(EXPORT_DIR) $(ARGS)

# The HTTP server and its page (http://127.0.0.1:8501/): the SavedModel of `make export` if there
# is one, else the model directory.
serve: install
	$(PY) -m seq2seq.serve $(if $(wildcard $(EXPORT_DIR)/*/saved_model.pb),--export $(EXPORT_DIR),--model $(MODEL_DIR)) $(ARGS)

# Speed figures (docs/benchmarks.md): ARGS=--quick for a run of about 6 minutes.
bench: install data
	$(PY) -m seq2seq.bench --output runs/bench.json $(ARGS)

# This toolkit and JoeyNMT side by side, in turns (sets JoeyNMT up in runs/peer first; about 30 minutes).
bench-peer: install data
	$(PY) -m seq2seq.bench --peer joeynmt --output runs/bench-peer.json $(ARGS)

# BLEU and chrF of the shipped configs on test_2016_flickr, and of an ensemble of 4 seeds of the
# de→en config, training them first if needed (hours).
bench-quality: install data
	$(PY) -m seq2seq.bench --quality --output runs/quality.json $(ARGS)

test: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/pip install --quiet ruff==0.14.5
	$(VENV)/bin/ruff check --line-length 120 seq2seq tests data train.py translate.py

clean:
	rm -rf $(VENV) data/multi30k data/toy
