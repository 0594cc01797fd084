"""The SiftFunnel experiment runs end to end in its `tiny` preset and writes every report file."""

import dataclasses
import json
import math

import mijax_experiments as experiments

# three rows (a trained model of each architecture and an inference-time defense) keep the test short:
# all nine rows took 433 s on the shared 2-core machine (12-02), mostly compilation; these three 153 s at
# load average 1-4
ROWS = ("unprotected", "siftfunnel", "dropout")


def test_siftfunnel_tiny(data_dir, tmp_path):
    module = experiments.get("siftfunnel")
    config = dataclasses.replace(module.get_config("tiny"), rows=ROWS)
    results = module.run(config, tmp_path, progress=False)
    for name in ("results.json", "results.csv", "config.json", "tables.md", "reconstructions.png", "privacy_utility.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = {r["defense"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    assert list(rows) == list(ROWS) and len(results["rows"]) == len(ROWS)
    for row in rows.values():
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float)), row
        assert 0.0 <= row["accuracy"] <= 1.0 and row["edge_flops"] > 0
    # the funnel sends 12 channels at a quarter of the input side; Classifier_4 at block 2 sends 2·width
    assert rows["siftfunnel"]["transmitted_floats"] == 12 * 8 * 8
    assert rows["unprotected"]["transmitted_floats"] == 2 * config.width * 8 * 8
    assert rows["dropout"]["delta_z"] < rows["unprotected"]["delta_z"]  # dropout zeroes 80 % of z
