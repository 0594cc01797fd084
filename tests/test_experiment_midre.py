"""The MIDRE experiment runs end to end in its `tiny` preset and writes every report file."""

import dataclasses
import json

import pytest

import mijax_experiments as experiments
from mijax_experiments import common


@pytest.mark.slow
def test_midre_tiny_writes_every_report_file(data_dir, tmp_path):
    module = experiments.get("midre")
    config = module.get_config("tiny")
    results = module.run(config, tmp_path, progress=False)
    for name in ("results.json", "results.csv", "config.json", "tables.md", "mnist_gmi_reconstructions.png",
                 "mnist_kedmi_reconstructions.png", "mnist_gmi_privacy_utility.png",
                 "mnist_kedmi_privacy_utility.png", "mnist_split_reconstructions.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    inversion = [r for r in rows if r["table"] == "training-data inversion"]
    assert {r["defense"] for r in inversion} == set(config.defenses)
    for r in inversion:
        assert 0 <= r["gmi_top1"] <= r["gmi_top5"] <= 1 and 0 <= r["kedmi_top1"] <= r["kedmi_top5"] <= 1
        assert r["gmi_knn"] > 0 and 0 < r["natural_accuracy"] <= 1
    split = [r for r in rows if r["table"] == "split inference"]
    assert {(r["defense"], r["attack"]) for r in split} == {(d, a) for d in config.split_defenses
                                                           for a in ("rMLE", "decoder")}
    assert len(results["summary"]) == len(config.defenses)
    assert "| mnist | erasing_0.4 | 1 |" in (tmp_path / "tables.md").read_text()
    assert (tmp_path / "tables.md").read_text() in common.render_report(tmp_path)  # `mijax report` shows the same tables


@pytest.mark.parametrize("settings, message", [({"evaluator_classes": "public"}, "evaluator_classes"),
                                               ({"evaluator_classes": "private"}, "top_k=5"),
                                               ({"top_k": 10}, "top_k=10")])
def test_midre_rejects_evaluator_settings_before_training(tmp_path, settings, message):
    module = experiments.get("midre")
    config = dataclasses.replace(module.get_config("tiny"), **settings)
    with pytest.raises(ValueError, match=message):
        module.run(config, tmp_path, progress=False)
    assert not any(tmp_path.iterdir())
