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
