"""The Ensembler experiment runs end to end in its `tiny` preset and writes every report file."""

import json

import pytest

import mijax_experiments as experiments


@pytest.mark.slow
def test_ensembler_tiny(data_dir, tmp_path):
    module = experiments.get("ensembler")
    config = module.get_config("tiny")
    results = module.run(config, tmp_path, progress=False)
    for name in ("results.json", "results.csv", "config.json", "tables.md", "recon_ensembler.png",
                 "recon_noise_alone.png", "recon_shredder.png", "privacy_utility_sigma.png",
                 "privacy_utility_grid.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    levels = {(r["defense"], r["level"]) for r in rows}
    assert {("ensembler", level) for level in ("A0", "A1", "A2", "A3", "R1", "R2")} <= levels
    assert {("noise alone", "A0"), ("shredder", "A0"), ("noise alone", "R2")} <= levels
    assert set(results["accuracy"]) == {"ensembler", "noise alone", "shredder"}
    assert sum(w != 0 for w in results["deployed_weights"]) == config.selected      # P-sparse as deployed
    assert len(results["sigma_sweep"]) == 2 * len(config.sigmas) and results["grid"]
    assert {"overhead_total", "overhead_client"} <= set(results["latency"])
    assert results["ssim_reduction"] and "SSIM reduction" in (tmp_path / "tables.md").read_text()
