"""Experiments (installed as `mijax_experiments`): one module per paper/table with `get_config(preset)` and `run(config, workdir)`.

`mijax run NAME` finds them here; each module's docstring states the command, cost and result.
"""

import importlib
from types import ModuleType

EXPERIMENTS = {
    "demo": "mijax_experiments.demo",
    "he2019": "mijax_experiments.he2019",
    "cem": "mijax_experiments.cem",
    "midre": "mijax_experiments.midre",
    "siftfunnel": "mijax_experiments.siftfunnel",
    "ensembler": "mijax_experiments.ensembler",
}


def get(name: str) -> ModuleType:
    """The experiment module called `name`; `ValueError` listing the valid names otherwise."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; valid: {', '.join(sorted(EXPERIMENTS))}")
    return importlib.import_module(EXPERIMENTS[name])
