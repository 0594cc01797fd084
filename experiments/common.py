"""Helpers shared by experiments: presets, overrides, the workdir guard."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import typing
from typing import Any

import jax
import numpy as np

from mijax import mesh as meshes


def preset(presets: dict[str, Any], name: str):
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(presets)}")
    return presets[name]


def _parse(key: str, text: str, kind) -> Any:
    origin = typing.get_origin(kind)
    try:
        if origin is tuple:
            item = typing.get_args(kind)[0]
            return tuple(_parse(key, t, item) for t in text.split(",") if t.strip())
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if kind in (int, float, str):
            return kind(text)
    except ValueError:
        pass
    else:
        raise ValueError(f"cannot set {key}: unsupported type {kind}")
    raise ValueError(f"bad value for {key}: expected {getattr(kind, '__name__', kind)}, got {text!r}")


def override(config, assignments: list[str]):
    """Applies `key=value` strings to a frozen dataclass config, parsing by field type.

    Raises:
        ValueError: on a malformed assignment, an unknown key (listing the valid keys) or a value
            that does not parse as the field's type.
    """
    hints = typing.get_type_hints(type(config))
    names = [f.name for f in dataclasses.fields(config)]
    changes = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep:
            raise ValueError(f"expected key=value, got {assignment!r}")
        if key not in names:
            raise ValueError(f"unknown key {key!r}; valid keys: {', '.join(names)}")
        changes[key] = _parse(key, text, hints[key])
    return dataclasses.replace(config, **changes)


def mesh_for(config):
    """The device mesh of `config.mesh` ("data:4,model:2"; "" = all devices on the data axis, and no
    mesh at all on a single device, where it would change nothing)."""
    text = getattr(config, "mesh", "")
    if not text and jax.device_count() == 1:
        return None
    return meshes.make_mesh(text or None)


def guard_workdir(workdir: pathlib.Path, config) -> None:
    """Refuses to resume in a workdir that holds a run of a different config."""
    path = workdir / "config.json"
    if path.exists():
        saved = json.loads(path.read_text()).get("config")
        current = json.loads(json.dumps(dataclasses.asdict(config)))
        if saved is not None:  # the mesh is not part of a run: checkpoints restore onto any mesh
            saved, current = ({k: v for k, v in c.items() if k != "mesh"} for c in (saved, current))
        if saved is not None and saved != current:
            raise ValueError(f"{workdir} holds a run with a different config; choose another --workdir "
                             f"or delete it")


def _json(value):
    return json.loads(json.dumps(value))


def command_for(name: str, module, saved: dict) -> str:
    """The `mijax run` command that resolves to the `saved` config: the preset it differs least from,
    plus `--set` for every field that differs (the mesh is not part of a run)."""
    best = None
    for preset_name, config in module.PRESETS.items():
        fields = _json(dataclasses.asdict(config))
        diff = {k: v for k, v in saved.items() if k != "mesh" and fields.get(k) != v}
        if best is None or len(diff) < len(best[1]):
            best = preset_name, diff
    preset_name, diff = best
    text = lambda v: ",".join(map(str, v)) if isinstance(v, list) else str(v)
    return " ".join([f"mijax run {name} --preset {preset_name}", *(f"--set {k}={text(v)}" for k, v in diff.items())])


def _finished_run(workdir: pathlib.Path) -> tuple[dict, dict]:
    paths = {name: workdir / f"{name}.json" for name in ("config", "results")}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise ValueError(f"{workdir} holds no finished run (missing {', '.join(missing)})")
    return tuple(json.loads(p.read_text()) for p in paths.values())


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _spread(values: list[float]) -> str:
    values = np.asarray(values, float)
    if np.all(values == values[0]):  # the same in every run (published numbers, image counts)
        return str(int(values[0])) if values[0].is_integer() else f"{values[0]:.4g}"
    return f"{values.mean():.4g} ± {values.std(ddof=1):.2g} ({values.min():.4g}–{values.max():.4g})"


def render_seeds(workdirs: list[str | pathlib.Path]) -> str:
    """Finished runs of one experiment that differ only in `seed`, as one markdown section: per row
    of the runs' tables (`rows` and any other list of rows in the results, matched on their
    non-numeric fields and the module's `SETTING_FIELDS`, default the sweep `value`), every numeric
    field as mean ± sample standard deviation (min–max) over the seeds, or its one value where every
    run has the same (published numbers); the same for each mapping of numbers in the results
    (target accuracies, phase times).

    Raises:
        ValueError: for fewer than two runs, runs of different experiments or configs, or runs
            whose rows do not match.
    """
    runs = [(pathlib.Path(w), *_finished_run(pathlib.Path(w))) for w in workdirs]
    if len(runs) < 2:
        raise ValueError(f"expected at least two workdirs to aggregate over seeds, got {len(runs)}")
    without_seed = lambda saved: {k: v for k, v in saved["config"].items() if k not in ("seed", "mesh")}
    first = runs[0][1]
    for workdir, saved, _ in runs[1:]:
        if saved.get("experiment") != first.get("experiment") or without_seed(saved) != without_seed(first):
            raise ValueError(f"{workdir} is not the run of {runs[0][0]} with another seed: configs differ")
    seeds = [saved["config"].get("seed") for _, saved, _ in runs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"expected different seeds, got {seeds}")
    name = first.get("experiment")
    if name is None:
        raise ValueError(f"{runs[0][0] / 'config.json'} does not name its experiment (written before 12-02)")
    import mijax_experiments as experiments
    module = experiments.get(name)
    command = command_for(name, module, {**first["config"], "seed": "S"})
    settings = getattr(module, "SETTING_FIELDS", ("value",))
    row_lists = [k for k, v in runs[0][2].items()
                 if isinstance(v, list) and v and all(isinstance(row, dict) for row in v)]
    keyed = {}
    for field in row_lists:
        keyed[field] = []
        for workdir, _, results in runs:
            rows = {}
            for row in results.get(field, []):
                key = tuple((k, v) for k, v in row.items() if v is not None and (not _number(v) or k in settings))
                rows.setdefault(key, row)
            keyed[field].append(rows)
        if any(rows.keys() != keyed[field][0].keys() for rows in keyed[field][1:]):
            raise ValueError(f"the runs' {field} do not match (different tables or settings)")
    lines = [f"## {name} over seeds {', '.join(map(str, seeds))}: `{command}` (S = each seed)", "",
             f"- runs: {', '.join(str(w) for w, _, _ in runs)}",
             f"- wall time per run: {', '.join(str(_total_seconds(r)) for _, _, r in runs)} s",
             "- cells: mean ± sample standard deviation (min–max) over the seeds", ""]
    if hasattr(module, "claims"):
        held = [module.claims(results) for _, _, results in runs]
        lines += ["Orderings the papers report, and in how many of the runs each held:", ""]
        lines += [f"- {claim}: {sum(h[claim] for h in held)} of {len(held)}" for claim in held[0]]
        lines.append("")
    for field, mapping in _number_mappings(runs[0][2]):
        cells = [f"{k}: {_spread([r[field][k] for _, _, r in runs])}" for k in mapping]
        lines += [f"{field}: " + "; ".join(cells), ""]
    for field in row_lists:
        first_rows = keyed[field][0]
        default_title = "" if field == "rows" else field
        for table in dict.fromkeys(dict(key).get("table", default_title) for key in first_rows):
            keys = [key for key in first_rows if dict(key).get("table", default_title) == table]
            numeric = list(dict.fromkeys(k for key in keys for k, v in first_rows[key].items()
                                         if _number(v) and k not in settings))
            labels = list(dict.fromkeys(k for key in keys for k, _ in key if k != "table"))
            lines += [f"### {table}" if table else "### rows", "", "| " + " | ".join(labels + numeric) + " |",
                      "|" + "---|" * (len(labels) + len(numeric))]
            for key in keys:
                values = dict(key)
                cells = [str(values.get(k, "")) for k in labels]
                for k in numeric:
                    got = [rows[key].get(k) for rows in keyed[field]]
                    cells.append(_spread(got) if all(_number(g) for g in got) else "")
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _total_seconds(results: dict):
    """A run's wall time: `seconds`, or its `total` where the run times its phases (CEM)."""
    seconds = results.get("seconds")
    return seconds.get("total") if isinstance(seconds, dict) else seconds


def _number_mappings(results: dict):
    """The (field, mapping) pairs of `results` whose values are mappings of numbers."""
    return [(k, v) for k, v in results.items()
            if isinstance(v, dict) and v and all(_number(x) for x in v.values())]


def render_report(workdir: str | pathlib.Path) -> str:
    """A run's report as a markdown section, rendered from the files the run wrote (`config.json`,
    `results.json`): the command that reproduces it, seed, versions, wall time, evaluated images and
    the experiment's tables (its `report_markdown(results)`, or a table of the rows).

    Raises:
        ValueError: if `workdir` holds no finished run.
    """
    workdir = pathlib.Path(workdir)
    saved, results = _finished_run(workdir)
    import mijax_experiments as experiments
    name = saved.get("experiment")
    if name is None:  # written before config.json named it: the experiment whose config has these fields
        fields = lambda n: {f.name for f in dataclasses.fields(experiments.get(n).Config)}
        matches = [n for n in experiments.EXPERIMENTS if set(saved["config"]) <= fields(n)]
        if len(matches) != 1:
            raise ValueError(f"{workdir / 'config.json'} does not name its experiment and matches {matches or 'none'}")
        name = matches[0]
    module = experiments.get(name)
    versions = saved.get("versions", {})
    seconds = _total_seconds(results)
    lines = [f"## {name}: `{command_for(name, module, saved['config'])}`", "",
             f"- seed {saved.get('seed')}; mijax {versions.get('mijax')}, jax {versions.get('jax')}, "
             f"flax {versions.get('flax')}, Python {versions.get('python')} on {versions.get('jax_backend')}",
             f"- wall time: {seconds} s" if seconds is not None else "- wall time: not recorded"]
    newer = [f.name for f in dataclasses.fields(module.Config) if f.name not in saved["config"] and f.name != "mesh"]
    if newer:
        lines.append(f"- run before the config had {', '.join(newer)} (today's code would use their defaults)")
    evaluated = results.get("evaluated_images")
    if evaluated:
        lines.append(f"- evaluated images: {evaluated}")
    lines.append("")
    if hasattr(module, "report_markdown"):
        lines.append(module.report_markdown(results))
    else:
        from mijax import report
        lines += ["```", report.format_table(results.get("rows", [])), "```"]
    return "\n".join(lines).rstrip() + "\n"
