"""``python -m seq2seq.bench --quality``: the shipped configs' BLEU and chrF on test_2016_flickr.

Trains each config in ``QUALITY_CONFIGS`` into ``runs/NAME`` unless it has finished there
(``train.py`` resumes, so a finished run costs nothing), translates test_2016_flickr with the
config's own decoding settings and prints BLEU and chrF with sacreBLEU's signatures. Then an
ensemble line for each of ``ENSEMBLE_CONFIGS``: the config trained again with ``ENSEMBLE_SEEDS``
(``runs/NAME-seedK``, each with ``runs/NAME``'s SentencePiece model) and the members translating
together (``translate.py --model`` once per member).
"""

import os
import sys

from seq2seq.bench import ROOT, read_json, run_measured

QUALITY_CONFIGS = ("configs/multi30k_de_en.yaml", "configs/multi30k_en_de.yaml", "configs/bench_gru256.yaml")
ENSEMBLE_CONFIGS = ("configs/multi30k_de_en.yaml", "configs/multi30k_en_de.yaml")
ENSEMBLE_SEEDS = (1, 2, 3)  # besides the config's own seed: an ensemble of 4
TEST_SET = "data/multi30k/test_2016_flickr"  # + the language suffix of the config's training files


def _train(config_path, model_dir, log, overrides=()):
    log(f"{model_dir}: training (resumes, or returns at once if done)")
    command = [sys.executable, "train.py", "--config", config_path, "--model-dir", model_dir]
    for override in overrides:
        command += ["--set", override]
    return run_measured(command)[2]


def _translate(config, model_dirs, output_dir, label, test_set, log):
    """Translates the test set with ``model_dirs`` (one model or an ensemble); returns the result row."""
    source_lang = os.path.splitext(config.data.train_source)[1]
    target_lang = os.path.splitext(config.data.train_target)[1]
    log(f"{label}: translating {test_set}{source_lang}")
    stem = os.path.join(output_dir, f"{os.path.basename(test_set)}{target_lang}{'.ensemble' * (len(model_dirs) > 1)}")
    command = [sys.executable, "translate.py", "--input", f"{test_set}{source_lang}",
               "--reference", f"{test_set}{target_lang}", "--output", f"{stem}.hyp", "--metrics", f"{stem}.json"]
    for model_dir in model_dirs:
        command += ["--model", model_dir]
    run_measured(command)
    figures = read_json(os.path.join(ROOT, f"{stem}.json"))
    return {"direction": f"{source_lang[1:]}→{target_lang[1:]}", "beam_size": config.translate.beam_size,
            "models": len(model_dirs), "bleu": figures["bleu"], "chrf": figures["chrf"],
            "signatures": figures["signatures"]}


def quality(log, configs=QUALITY_CONFIGS, ensemble_configs=ENSEMBLE_CONFIGS, ensemble_seeds=ENSEMBLE_SEEDS,
            runs="runs", test_set=TEST_SET):
    """Trains (or resumes) and scores every config and every config's ensemble; returns {label: row}."""
    from seq2seq.config import load_config
    from seq2seq.model_dir import copy_tokenizer

    results = {}
    for config_path in configs:
        name = os.path.splitext(os.path.basename(config_path))[0]
        model_dir = os.path.join(runs, name)
        config = load_config(os.path.join(ROOT, config_path))
        train_wall = _train(config_path, model_dir, log)
        results[name] = {**_translate(config, [model_dir], model_dir, name, test_set, log),
                         "train_command_wall_sec": round(train_wall, 1)}
    for ensemble_config in ensemble_configs if ensemble_seeds else ():
        name = os.path.splitext(os.path.basename(ensemble_config))[0]
        config = load_config(os.path.join(ROOT, ensemble_config))
        members = [os.path.join(runs, name)]
        if ensemble_config not in configs:
            _train(ensemble_config, members[0], log)
        for seed in ensemble_seeds:
            member = os.path.join(runs, f"{name}-seed{seed}")
            os.makedirs(os.path.join(ROOT, member), exist_ok=True)
            copy_tokenizer(os.path.join(ROOT, members[0]), os.path.join(ROOT, member), config.tokenizer.joint)
            _train(ensemble_config, member, log, [f"training.seed={seed}"])
            members.append(member)
        label = f"{name} ×{len(members)}"
        results[label] = _translate(config, members, members[0], label, test_set, log)
    print("| config | direction | models | beam | BLEU | chrF |\n| --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['direction']} | {r['models']} | {r['beam_size']} | {r['bleu']:.2f} | {r['chrf']:.2f} |")
    for name, r in results.items():
        for signature in r["signatures"]:
            print(f"{name}: {signature}")
    return results
