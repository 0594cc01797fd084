"""Each paper experiment runs end to end in its `tiny` preset and writes every report file."""

import json

import numpy as np

import mijax_experiments as experiments


def test_every_experiment_has_presets_and_a_documented_command():
    for name in experiments.EXPERIMENTS:
        module = experiments.get(name)
        assert "tiny" in module.PRESETS, name
        assert f"mijax run {name}" in module.__doc__, name


def test_he2019_tiny(data_dir, tmp_path):
    module = experiments.get("he2019")
    results = module.run(module.get_config("tiny"), tmp_path, progress=False)
    for name in ("results.json", "results.csv", "config.json", "tables.md", "mnist_white-box.png",
                 "mnist_defense_sigma.png", "mnist_defense_scale.png", "mnist_defense_rate.png",
                 "mnist_inverse_network__same_distribution_.png", "mnist_shadow__same_set__same_net_.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    tables = {r["table"] for r in rows}
    assert len([t for t in tables if "ACSAC" in t]) == 3 and any("IoT-J" in t for t in tables)
    whitebox = [r for r in rows if "Table 3" in r["table"]]
    assert {r["cut"] for r in whitebox} == {"conv1", "relu2"}
    assert all(r["published_ssim"] > 0 for r in whitebox)
    assert "first of each class" in results["evaluated_images"]["mnist"]


def test_cem_tiny(data_dir, tmp_path):
    module = experiments.get("cem")
    config = module.get_config("tiny")
    results = module.run(config, tmp_path, progress=False)
    for name in ("results.json", "results.csv", "config.json", "tables.md", "log_det_monitor.png",
                 "reconstructions_training-time.png", "reconstructions_inference-time.png",
                 "reconstructions_gan.png", "privacy_utility_inference-time.png", "privacy_utility_gan.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = results["rows"]
    assert [(r["sigma"], r["lam"]) for r in rows] == module.grid(config)
    for row in rows:
        for attack in module.ATTACKS:
            assert 0 < row[f"{attack} mse"] < 1 and -1 <= row[f"{attack} ssim"] <= 1, (row, attack)
    assert len(results["gains"]) == len(config.sigmas) * (len(config.lams) - 1)
    monitor = results["log_det_monitor"]  # after each epoch's mixture refit
    assert set(monitor) == {"1", "2"} and np.all(np.isfinite([monitor["1"], monitor["2"]]))
