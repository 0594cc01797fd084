"""RESULTS.md holds what the archived runs (`results/runs/*`: their `config.json` and `results.json`)
render to, line for line: a number there that no run wrote fails here."""

import pathlib

import pytest

from mijax_experiments import common

REPO = pathlib.Path(__file__).resolve().parent.parent
RUNS = sorted(p for p in (REPO / "results" / "runs").iterdir() if p.is_dir())


def test_there_are_archived_runs():
    assert RUNS


@pytest.mark.parametrize("workdir", RUNS, ids=lambda p: p.name)
def test_results_md_holds_the_rendering(workdir):
    results = (REPO / "RESULTS.md").read_text()
    rendered = common.render_report(workdir).splitlines()
    missing = [line for line in rendered[1:] if line.strip() and line not in results]  # [0]: the heading
    assert not missing, f"{len(missing)} lines of `mijax report {workdir.relative_to(REPO)}` are not in RESULTS.md: {missing[:3]}"
