import json
import subprocess
import sys

import pytest

import mijax_experiments as experiments
from mijax import cli
from mijax.checkpoint import Checkpointer

FILES = ("results.json", "results.csv", "config.json", "reconstructions.png", "privacy_utility.png")


def _recorded(calls, name, method):
    """`method`, appending `name` to `calls` on every call."""
    def wrapper(self, *args, **kwargs):
        calls.append(name)
        return method(self, *args, **kwargs)
    return wrapper


def test_demo_tiny_preset_writes_every_report_file(tmp_path, capsys, monkeypatch):
    assert cli.main(["demo", "--preset", "tiny", "--workdir", str(tmp_path), "--no-progress",
                     "--set", "sigmas=0,0.5"]) == 0
    for name in FILES:
        assert (tmp_path / name).stat().st_size > 0, name
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["sigma"] for r in rows] == [0.0, 0.5]
    assert all(0 <= r["accuracy"] <= 1 and -1 <= r["ssim"] <= 1 for r in rows)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["config"]["sigmas"] == [0.0, 0.5] and "jax" in config["versions"]
    out = capsys.readouterr().out
    assert "sigma" in out and "ssim" in out and str(tmp_path) in out
    # a rerun resumes from the checkpoints instead of training again: it restores the trained models,
    # saves no new checkpoint and reports the same results
    calls = []
    for name in ("save", "restore"):
        monkeypatch.setattr(Checkpointer, name, _recorded(calls, name, getattr(Checkpointer, name)))
    assert cli.main(["demo", "--preset", "tiny", "--workdir", str(tmp_path), "--no-progress",
                     "--set", "sigmas=0,0.5"]) == 0
    assert calls == ["restore"], calls
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == rows
    # another config in the same workdir is refused
    with pytest.raises(SystemExit, match="different config"):
        cli.main(["demo", "--preset", "tiny", "--workdir", str(tmp_path), "--set", "sigmas=0,1"])


@pytest.mark.parametrize("argv,message", [
    (["run", "nope"], f"unknown experiment 'nope'; valid: {', '.join(sorted(experiments.EXPERIMENTS))}"),
    (["demo", "--preset", "huge"], "unknown preset 'huge'; valid: default, tiny"),
    (["demo", "--set", "epoch=3"], "unknown key 'epoch'; valid keys: seed, "),
    (["demo", "--set", "epochs=three"], "bad value for epochs: expected int, got 'three'"),
    (["demo", "--set", "sigmas=0,x"], "bad value for sigmas"),
    (["demo", "--set", "epochs"], "expected key=value"),
])
def test_bad_arguments_give_one_line_errors(argv, message):
    with pytest.raises(SystemExit) as error:
        cli.main(argv)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_list_and_console_script():
    result = subprocess.run([sys.executable, "-m", "mijax.cli", "list"], capture_output=True, text=True, check=True)
    assert "demo" in result.stdout and "presets: default (default), tiny" in result.stdout
    assert "presets: paper, smoke (default), tiny" in result.stdout   # he2019


def test_every_experiment_runs_without_a_preset():
    # `mijax run NAME` uses the preset its get_config() picks by default, shown by `mijax list`
    for name in experiments.EXPERIMENTS:
        module = experiments.get(name)
        default = cli._default_preset(module)
        assert default in module.PRESETS, name
        assert module.get_config() == module.get_config(default), name
