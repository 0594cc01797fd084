"""RESULTS.md holds what the archived runs render to, line for line: a number there that no run wrote
fails here. `results/runs/*` are single runs (their `config.json` and `results.json`, rendered by
`mijax report`); `results/seeds/*.txt` each list the workdirs of one experiment over seeds (relative to
the repository; rendered by `mijax report --seeds`)."""

import pathlib

import pytest

from mijax_experiments import common

REPO = pathlib.Path(__file__).resolve().parent.parent
RUNS = sorted(p for p in (REPO / "results" / "runs").iterdir() if p.is_dir())
SEED_GROUPS = sorted((REPO / "results" / "seeds").glob("*.txt"))


def _missing(rendered: str) -> list[str]:
    results = (REPO / "RESULTS.md").read_text()
    return [line for line in rendered.splitlines()[1:] if line.strip() and line not in results]  # [0]: the heading


def test_there_are_archived_runs():
    assert RUNS and SEED_GROUPS


@pytest.mark.parametrize("workdir", RUNS, ids=lambda p: p.name)
def test_results_md_holds_the_rendering(workdir):
    missing = _missing(common.render_report(workdir))
    assert not missing, f"{len(missing)} lines of `mijax report {workdir.relative_to(REPO)}` are not in RESULTS.md: {missing[:3]}"


@pytest.mark.parametrize("group", SEED_GROUPS, ids=lambda p: p.stem)
def test_results_md_holds_the_seed_rendering(group, monkeypatch):
    workdirs = group.read_text().split()
    monkeypatch.chdir(REPO)  # the rendering names the workdirs as given
    missing = _missing(common.render_seeds(workdirs))
    assert not missing, f"{len(missing)} lines of `mijax report --seeds {' '.join(workdirs)}` are not in RESULTS.md: {missing[:3]}"
