"""Helpers shared by experiments: presets, overrides, the workdir guard."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import typing
from typing import Any

import jax

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


def render_report(workdir: str | pathlib.Path) -> str:
    """A run's report as a markdown section, rendered from the files the run wrote (`config.json`,
    `results.json`): the command that reproduces it, seed, versions, wall time, evaluated images and
    the experiment's tables (its `report_markdown(results)`, or a table of the rows).

    Raises:
        ValueError: if `workdir` holds no finished run.
    """
    workdir = pathlib.Path(workdir)
    paths = {name: workdir / f"{name}.json" for name in ("config", "results")}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise ValueError(f"{workdir} holds no finished run (missing {', '.join(missing)})")
    saved, results = (json.loads(p.read_text()) for p in paths.values())
    import mijax_experiments as experiments
    name = saved.get("experiment")
    if name is None:  # written before config.json named it: the experiment whose config has these fields
        fields = lambda n: {f.name for f in dataclasses.fields(experiments.get(n).Config)}
        matches = [n for n in experiments.EXPERIMENTS if set(saved["config"]) <= fields(n)]
        if len(matches) != 1:
            raise ValueError(f"{paths['config']} does not name its experiment and matches {matches or 'none'}")
        name = matches[0]
    module = experiments.get(name)
    versions = saved.get("versions", {})
    seconds = results.get("seconds")
    if isinstance(seconds, dict):
        seconds = seconds.get("total")
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
