"""``python -m seq2seq.bench --quality``: the shipped configs' BLEU and chrF on test_2016_flickr.

Trains each config in ``QUALITY_CONFIGS`` into ``runs/NAME`` unless it has finished there
(``train.py`` resumes, so a finished run costs nothing), translates test_2016_flickr with the
config's own decoding settings and prints BLEU and chrF with sacreBLEU's signatures.
"""

import os
import sys

from seq2seq.bench import ROOT, read_json, run_measured

QUALITY_CONFIGS = ("configs/multi30k_de_en.yaml", "configs/multi30k_en_de.yaml", "configs/bench_gru256.yaml")


def quality(log):
    from seq2seq.config import load_config

    results = {}
    for config_path in QUALITY_CONFIGS:
        name = os.path.splitext(os.path.basename(config_path))[0]
        model_dir = os.path.join("runs", name)
        config = load_config(os.path.join(ROOT, config_path))
        source_lang = os.path.splitext(config.data.train_source)[1]
        target_lang = os.path.splitext(config.data.train_target)[1]
        log(f"{name}: training (resumes, or returns at once if done)")
        _, _, train_wall, _ = run_measured([sys.executable, "train.py", "--config", config_path, "--model-dir",
                                            model_dir])
        log(f"{name}: translating test_2016_flickr")
        metrics = os.path.join(model_dir, f"test_2016_flickr{target_lang}.json")
        run_measured([
            sys.executable, "translate.py", "--model", model_dir,
            "--input", f"data/multi30k/test_2016_flickr{source_lang}",
            "--reference", f"data/multi30k/test_2016_flickr{target_lang}",
            "--output", os.path.join(model_dir, f"test_2016_flickr{target_lang}.hyp"), "--metrics", metrics])
        figures = read_json(metrics)
        results[name] = {"direction": f"{source_lang[1:]}→{target_lang[1:]}", "beam_size": config.translate.beam_size,
                         "bleu": figures["bleu"], "chrf": figures["chrf"], "signatures": figures["signatures"],
                         "train_command_wall_sec": round(train_wall, 1)}
    print("| config | direction | beam | BLEU | chrF |\n| --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['direction']} | {r['beam_size']} | {r['bleu']:.2f} | {r['chrf']:.2f} |")
    for name, r in results.items():
        for signature in r["signatures"]:
            print(f"{name}: {signature}")
    return results
