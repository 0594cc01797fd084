"""Benchmark: CEM's 15-configuration σ×λ grid as one vmapped train step vs 15 sequential runs.

    python benchmarks/cem_grid.py [--width 0.25] [--batch 128] [--steps 5] [--rounds 3] [--modes vmap,map,unroll]

One training step of `vgg11_bn_sgm` (width multiplier `--width`) with Gaussian noise + the CEM term
(fitted random mixture, 10 classes × 5 components) at batch 128 on CIFAR-shaped random data, SGD
momentum 0.9. "grid": the 15 configurations σ ∈ {0.01, 0.025, 0.05, 0.1, 0.15} × λ ∈ {0, 8, 16}
as one program over the stacked states (shared batch), as `mijax.train.fit(..., sweep=True)` runs it,
in each `mijax.stacks` mode of `--modes` (`vmap`: convolutions planned for batched kernels; `map`:
`lax.map` over pairs of unrolled models; `unroll`: a Python loop in the trace). "sequential": the
single-configuration step, run once per configuration (15 runs of the same compiled program). Every
variant runs `--steps` steps per dispatch in `fit_loop`'s `lax.scan` program; times per step,
excluding compilation (reported apart). The variants take turns for `--rounds` rounds, two
dispatches each per round of which the second is timed (the first re-warms the caches the other
programs evicted, as a long run of one program would have them), and each is reported by its
median round: this machine's speed drifts over minutes, so a baseline timed once before the grids
compared them with a different machine.
Target: grid at least as fast as sequential (ratio ≥ 1); `mijax.stacks.stack_mode` should name the
fastest mode.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mijax import defenses
from mijax.defenses import Mixture
from mijax.models import vgg11_bn_sgm
from mijax.stacks import STACK_MODES, map_models, stack_mode
from mijax.train import init_train_state, make_train_step, scan_steps

SIGMAS, LAMS = (0.01, 0.025, 0.05, 0.1, 0.15), (0.0, 8.0, 16.0)


def _defense_state(defense, sigma, lam, key):
    noise, cem = defenses.cem_with_noise(lam=lam, sigma=sigma, num_classes=10, feature_dim=512,
                                         samples_per_class=5000).init()
    mixture = Mixture(means=jax.random.uniform(key, (10, 5, 512)), weights=jnp.full((10, 5), 0.2),
                      variances=jnp.full((10, 5), 0.01), counts=jnp.full((10, 5), 1000, jnp.int32))
    return noise, {**cem, "mixture": mixture, "fitted": jnp.ones((), jnp.float32)}


def _compile(step, state, images, labels, steps):
    """(a function that runs and times one dispatch of `steps` scanned steps, compile + first dispatch)."""
    run = scan_steps(step)
    data, rows = (jnp.asarray(images), jnp.asarray(labels)), np.tile(np.arange(len(images)), (steps, 1))
    carry = {"state": state, "first": 0}

    def dispatch():
        start = time.perf_counter()
        carry["state"], metrics = run(carry["state"], data, rows, jax.random.key(0), np.int32(carry["first"]), ())
        jax.block_until_ready(metrics)
        carry["first"] += steps
        return time.perf_counter() - start

    return dispatch, dispatch()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default=",".join(STACK_MODES))
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    images = rng.uniform(size=(args.batch, 32, 32, 3)).astype(np.float32)
    labels = (np.arange(args.batch) % 10).astype(np.int32)
    optimizer = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.05, momentum=0.9))
    configs = [(s, lam) for s in SIGMAS for lam in LAMS]
    defense = defenses.cem_with_noise(lam=0.0, sigma=0.01, num_classes=10, feature_dim=512, samples_per_class=5000)
    states = [_defense_state(defense, s, lam, jax.random.key(1)) for s, lam in configs]
    print(f"backend {jax.default_backend()}, vgg11_bn_sgm width {args.width}, batch {args.batch}, "
          f"{len(configs)} configurations, {args.steps} steps per dispatch, median of {args.rounds} rounds")
    model = vgg11_bn_sgm(width_multiplier=args.width)
    step = make_train_step(model, optimizer, defense)
    init = lambda s: init_train_state(model, optimizer, jax.random.key(0), s)
    variants = {"sequential": _compile(step, jax.jit(init)(states[0]), images, labels, args.steps)}
    modes = args.modes.split(",")
    for mode in modes:
        grid = map_models(step, (0, None, None, None), mode=mode)
        variants[mode] = _compile(grid, jax.jit(jax.vmap(init))(defenses.stack(states)), images, labels, args.steps)
    rounds = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (dispatch, _) in variants.items():
            dispatch()  # warms this program's caches after the others ran: only the second is timed
            rounds[name].append(dispatch() / args.steps)
    single_s = float(np.median(rounds["sequential"]))
    sequential = len(configs) * single_s
    print(f"sequential (15x) : {sequential:7.3f} s/step  ({single_s:.3f} s each, compile "
          f"{variants['sequential'][1]:.1f} s)")
    for mode in modes:
        grid_s = float(np.median(rounds[mode]))
        per_round = " / ".join(f"{len(configs) * a / g:.2f}" for a, g in zip(rounds["sequential"], rounds[mode]))
        print(f"grid ({mode:6s})    : {grid_s:7.3f} s/step  (compile {variants[mode][1]:.1f} s); "
              f"ratio sequential / grid {sequential / grid_s:.2f} (rounds {per_round}; target >= 1)")
    print(f"mijax.stacks.stack_mode on this backend: {stack_mode(len(configs))!r}")


if __name__ == "__main__":
    main()
