"""Where a run's compile time goes: sums the log of a run made with `JAX_LOG_COMPILES=1`.

    JAX_LOG_COMPILES=1 mijax run he2019 --no-progress --workdir /tmp/he > /tmp/he.log 2>&1
    python benchmarks/compile_log.py /tmp/he.log

Prints the seconds of tracing, lowering and XLA compilation; the compiled programs by function
name (seconds, count); the XLA seconds spent on programs whose signature (name, argument shapes)
was compiled before in the same run; and the persistent-cache hits (BENCHMARKS.md, smoke presets).
"""

from __future__ import annotations

import argparse
import collections
import re

_FINISHED = re.compile(r"Finished (XLA compilation of|tracing \+ transforming|jaxpr to MLIR module conversion|"
                       r"tracing) (\S+).* in ([0-9.e-]+) sec")
_COMPILING = re.compile(r"Compiling (jit\(\S+\)) with global shapes and types (.*?)\. Argument mapping")


def summarise(lines) -> dict:
    phases, seconds, counts, seen = collections.Counter(), collections.Counter(), collections.Counter(), set()
    repeated, signature, hits = 0.0, None, 0
    for line in lines:
        if "Persistent compilation cache hit" in line:
            hits += 1
        match = _COMPILING.search(line)
        if match:
            signature = match.groups()
            continue
        match = _FINISHED.search(line)
        if not match:
            continue
        kind, name, t = match.group(1), match.group(2), float(match.group(3))
        phases[kind] += t
        if kind.startswith("XLA"):
            seconds[name] += t
            counts[name] += 1
            if signature in seen:
                repeated += t
            seen.add(signature)
            signature = None
    return {"phases": phases, "seconds": seconds, "counts": counts, "repeated": repeated, "hits": hits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", help="stderr of a run with JAX_LOG_COMPILES=1")
    parser.add_argument("--top", type=int, default=12, help="functions to list")
    args = parser.parse_args()
    with open(args.log, errors="replace") as f:
        s = summarise(f)
    print(", ".join(f"{kind}: {t:.1f} s" for kind, t in s["phases"].items()))
    print(f"{sum(s['counts'].values())} XLA compilations; {s['repeated']:.1f} s of them repeat a signature "
          f"compiled before; {s['hits']} persistent-cache hits")
    for name, t in s["seconds"].most_common(args.top):
        print(f"{t:8.1f} s {s['counts'][name]:5d}x  {name}")


if __name__ == "__main__":
    main()
