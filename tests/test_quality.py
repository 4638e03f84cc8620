"""``python -m seq2seq.bench --quality`` on the toy task: training, scoring and the ensemble line."""

import filecmp
import os

import yaml

from conftest import toy_config
from seq2seq.quality import quality


def test_quality_trains_scores_and_ensembles_seeds(toy_data, tmp_path, capsys):
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(toy_config(toy_data, **{"training.max_steps": 300})))
    runs = tmp_path / "runs"
    results = quality(lambda message: None, configs=(str(config),), ensemble_configs=(str(config),),
                      ensemble_seeds=(7,), runs=str(runs), test_set=f"{toy_data}/valid")
    assert list(results) == ["toy", "toy ×2"]
    single, ensemble = results["toy"], results["toy ×2"]
    assert (single["models"], ensemble["models"]) == (1, 2)
    assert single["direction"] == "src→tgt" and single["bleu"] > 20 and ensemble["bleu"] > 20
    assert single["train_command_wall_sec"] > 0 and single["signatures"][0].startswith("BLEU|")
    # The second member trained with its own seed and the first member's SentencePiece model.
    member = runs / "toy-seed7"
    assert yaml.safe_load((member / "config.yaml").read_text())["training"]["seed"] == 7
    assert filecmp.cmp(runs / "toy" / "spm.model", member / "spm.model", shallow=False)
    assert os.path.getsize(runs / "toy" / "valid.tgt.ensemble.hyp") > 0
    table = capsys.readouterr().out
    assert f"| toy ×2 | src→tgt | 2 | 5 | {ensemble['bleu']:.2f} |" in table
