"""Reports of experiments: JSON/CSV results, the resolved config with versions, and figures.

Host-side only (NumPy and matplotlib); nothing here runs inside a jit-compiled step.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
import platform
import sys
from importlib import metadata
from typing import Any, Mapping, Sequence

import numpy as np

_PACKAGES = ("mijax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets",
             "numpy", "dm-pix")


def _pyplot():
    """matplotlib, imported on first use (it would add a third of a second to `import mijax`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def versions() -> dict[str, str]:
    """Python, platform and the versions of the packages a result depends on."""
    found = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    try:
        import jax
        found["jax_backend"] = jax.default_backend()
    except Exception:  # the report must still be written
        pass
    return found


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)) or type(value).__module__.startswith("jax"):
        array = np.asarray(value)
        return array.item() if array.ndim == 0 else array.tolist()
    return value


def write_config(workdir: str | pathlib.Path, config: Any, *, seed: int | None = None) -> pathlib.Path:
    """Writes `config.json`: the resolved config, the seed, the versions and, for a config defined in
    an experiment module, the experiment's name (what `mijax report` renders it with)."""
    path = pathlib.Path(workdir) / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"config": _plain(config), "seed": seed, "versions": versions()}
    package, _, name = type(config).__module__.rpartition(".")
    if package == "mijax_experiments":
        payload["experiment"] = name
    path.write_text(json.dumps(payload, indent=2, sort_keys=True))
    return path


def write_results(workdir: str | pathlib.Path, rows: Sequence[Mapping[str, Any]], *,
                  extra: Mapping[str, Any] | None = None) -> tuple[pathlib.Path, pathlib.Path]:
    """Writes `results.json` (rows plus `extra`) and `results.csv` (one line per row)."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rows = [_plain(dict(r)) for r in rows]
    json_path = workdir / "results.json"
    json_path.write_text(json.dumps({"rows": rows, **_plain(dict(extra or {}))}, indent=2))
    csv_path = workdir / "results.csv"
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return json_path, csv_path


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
                 *, precision: int = 4) -> str:
    """A plain-text table of `rows` for the terminal."""
    columns = list(columns or dict.fromkeys(k for r in rows for k in r))

    def cell(v):
        if isinstance(v, (float, np.floating)):
            return f"{v:.{precision}g}"
        return str(v)

    body = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(columns)]
    line = lambda cells: "  ".join(s.rjust(w) for s, w in zip(cells, widths))
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, body)])


def reconstruction_grid(path: str | pathlib.Path, originals: np.ndarray,
                        reconstructions: Mapping[str, np.ndarray], *, title: str | None = None,
                        max_images: int = 10) -> pathlib.Path:
    """Saves a PNG with the originals in the first row and one row per set of reconstructions.

    Args:
        path: the PNG to write.
        originals: `[batch, height, width, channels]` in [0,1].
        reconstructions: row label → `[batch, height, width, channels]` in [0,1].
        title: figure title.
        max_images: columns shown.
    """
    rows = {"original": np.asarray(originals), **{k: np.asarray(v) for k, v in reconstructions.items()}}
    n = min(max_images, len(originals))
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), n, figsize=(1.1 * n + 1.2, 1.15 * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r, c]
            image = np.clip(images[c], 0, 1)
            ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def privacy_utility_plot(path: str | pathlib.Path, rows: Sequence[Mapping[str, Any]], *, x: str,
                         privacy: str = "ssim", utility: str = "accuracy", group: str | None = None,
                         title: str | None = None, xlabel: str | None = None) -> pathlib.Path:
    """Saves a PNG of attack quality (left axis) and task utility (right axis) against `x`.

    Args:
        path: the PNG to write.
        rows: result rows holding `x`, `privacy`, `utility` (and `group`).
        x: the swept setting (e.g. "sigma").
        privacy: the attack metric plotted on the left axis (higher = worse privacy).
        utility: the accuracy plotted on the right axis.
        group: optional key splitting rows into one curve per value (e.g. "defense").
    """
    groups: dict[Any, list] = {}
    for r in rows:
        groups.setdefault(r.get(group) if group else None, []).append(r)
    plt = _pyplot()
    fig, left = plt.subplots(figsize=(5.5, 3.6))
    right = left.twinx()
    for i, (name, members) in enumerate(groups.items()):
        members = sorted(members, key=lambda r: r[x])
        xs = [r[x] for r in members]
        suffix = f" ({name})" if name is not None else ""
        color = f"C{i}"
        left.plot(xs, [r[privacy] for r in members], "o-", color=color, label=f"attack {privacy}{suffix}")
        right.plot(xs, [r[utility] for r in members], "s--", color=color, alpha=0.7,
                   label=f"{utility}{suffix}")
    left.set_xlabel(xlabel or x)
    left.set_ylabel(f"attack {privacy} (lower = more private)")
    right.set_ylabel(utility)
    handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    labels = left.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
    left.legend(handles, labels, fontsize=7, loc="best")
    if title:
        left.set_title(title, fontsize=9)
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
