"""The `mijax` command: `mijax demo`, `mijax run EXPERIMENT`, `mijax list`, `mijax report [--seeds] WORKDIR...`.

It only parses arguments and calls `experiments.<name>.run(config, workdir)`.
"""

from __future__ import annotations

import argparse
import inspect
import pathlib
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mijax", description="Model inversion attacks and defenses "
                                     "for split inference (JAX).")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("demo", "the main job on the embedded digits data (no download)"),
                            ("run", "run an experiment")):
        sub = commands.add_parser(name, help=help_text)
        if name == "run":
            sub.add_argument("experiment", help="experiment name (see `mijax list`)")
        sub.add_argument("--preset", default=None,
                         help="named config (see `mijax list`; default: the experiment's own)")
        sub.add_argument("--workdir", type=pathlib.Path, default=None,
                         help="output folder; a rerun resumes from its checkpoints "
                              "(default: ./mijax-runs/EXPERIMENT-PRESET)")
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config field (repeatable); tuples as comma-separated values")
        sub.add_argument("--no-progress", action="store_true", help="hide progress bars")
    commands.add_parser("list", help="list experiments and their presets")
    sub = commands.add_parser("report", help="render finished runs' reports as markdown (for RESULTS.md)")
    sub.add_argument("workdirs", nargs="+", type=pathlib.Path, help="workdirs of finished runs")
    sub.add_argument("--seeds", action="store_true",
                     help="one section over runs that differ only in their seed: mean ± std (min–max) per cell")
    return parser


def _list() -> None:
    import mijax_experiments as experiments

    for name in sorted(experiments.EXPERIMENTS):
        module = experiments.get(name)
        summary = (module.__doc__ or "").strip().splitlines()[0]
        default = _default_preset(module)
        presets = ", ".join(f"{p} (default)" if p == default else p for p in module.PRESETS)
        print(f"{name:10s} {summary}\n{'':10s} presets: {presets}")


def _default_preset(module) -> str:
    """The preset an experiment's `get_config()` picks without an argument."""
    return inspect.signature(module.get_config).parameters["preset"].default


def _run(name: str, args) -> None:
    import mijax_experiments as experiments
    from mijax_experiments import common
    from mijax import mesh, report

    mesh.initialize()  # one of several processes (JAX_COORDINATOR_ADDRESS set): join them first
    try:
        module = experiments.get(name)
        preset = args.preset or _default_preset(module)
        workdir = args.workdir or pathlib.Path("mijax-runs") / f"{name}-{preset}"
        config = common.override(module.get_config(preset), args.overrides)
        common.guard_workdir(workdir, config)
    except ValueError as error:
        raise SystemExit(f"mijax: error: {error}")
    results = module.run(config, workdir, progress=not args.no_progress)
    rows = results.get("rows", [])
    if rows:
        print(report.format_table(rows))
    print(f"\nreport written to {workdir.resolve()}")


def _report(workdirs: list[pathlib.Path], seeds: bool) -> None:
    from mijax_experiments import common

    try:
        if seeds:
            print(common.render_seeds(workdirs), end="")
        else:
            print("\n".join(common.render_report(w) for w in workdirs), end="")
    except ValueError as error:
        raise SystemExit(f"mijax: error: {error}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            _list()
        elif args.command == "report":
            _report(args.workdirs, args.seeds)
        else:
            from mijax import compilation_cache

            compilation_cache.enable()
            _run("demo" if args.command == "demo" else args.experiment, args)
    except FileNotFoundError as error:  # missing dataset files: the message says where to put them
        raise SystemExit(f"mijax: error: {error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
