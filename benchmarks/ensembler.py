"""Benchmark: Ensembler's N-member inference and stage-1 training as one program.

    python benchmarks/ensembler.py [--members 10] [--width 8] [--batch 64] [--steps 4] [--repeats 20]

Inference (eval mode, CIFAR-shaped random images, one batch of `--batch`): the deployed N-member
ensemble — client head + noise, the N server members as one program (`mijax.stacks.map_models`),
the client's selector and tail — against plain split inference (head + noise, one member, tail) and
against a Python loop over the members (N dispatches of the one-member program, then the selector
and tail), all in the same run; medians of `--repeats` calls, compilation excluded (reported apart).
Training: stage 1's N members (ResNet-18 with member perturbation + noise, Adam) as one program
(`mijax.train.fit(..., sweep=True)`'s step, `--steps` steps per `lax.scan` dispatch) against N
sequential runs of the one-member step. Target: ≥ 1× for both stacked forms on CPU.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mijax.defenses import ensembler as E
from mijax.models.resnet18 import resnet18
from mijax.stacks import map_models
from mijax.train import init_train_state, make_train_step, scan_steps


def _median(fn, *args, repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return compile_s, float(np.median(times))


def inference(members, width, batch, repeats, sigma=0.5):
    member_model = resnet18(width=width)
    config = E.EnsemblerConfig(members=members, selected=max(1, members // 3))
    model = E.ensembler_model(member_model, config)
    stacked = E.init_members(member_model, jax.random.key(0), members)
    variables = E.harden(E.assemble(model, stacked, jax.random.key(1)), config.selected)
    single = member_model.init(jax.random.key(2))
    x, key = jax.random.uniform(jax.random.key(3), (batch, 32, 32, 3)), jax.random.key(4)

    ensemble = jax.jit(lambda v, x, k: E.deployed_logits(model, v, x, sigma=sigma, key=k))

    @jax.jit
    def plain(v, x, k):
        z = member_model.edge_apply(v, x)[0]
        z = z + sigma * jax.random.normal(k, z.shape)
        return member_model.tail_apply(v, member_model.cloud_apply(v, z)[0])[0]

    head = jax.jit(lambda v, x, k: E.transmit_features(model, v, x, sigma=sigma, key=k))
    names = model.cloud_names
    body = jax.jit(lambda v, z: member_model.network.apply(v, z, start=names[0], stop=names[-1])[0])
    tail = jax.jit(lambda v, h: model.tail_apply(v, h)[0])
    bodies = [jax.tree.map(lambda a: a[m], model.cloud_variables(variables)) for m in range(members)]

    def loop(v, x, k):
        z = head(v, x, k)
        return tail(v, jnp.stack([body(b, z) for b in bodies]))

    np.testing.assert_allclose(loop(variables, x, key), ensemble(variables, x, key), rtol=1e-4, atol=1e-5)
    out = {}
    for name, fn, v in (("ensemble", ensemble, variables), ("plain split", plain, single),
                        ("python loop", loop, variables)):
        out[name] = _median(fn, v, x, key, repeats=repeats)
    return out


def training(members, width, batch, steps):
    model = resnet18(width=width)
    config = E.EnsemblerConfig(members=members, selected=1)
    defense = E.member_perturbation(sigma=config.sigma, scale=config.perturbation_scale)
    states = E.member_states(defense, jax.random.key(0), model.defense_spec(), members)
    optimizer = optax.adam(1e-3)
    step = make_train_step(model, optimizer, defense, augment=E.cifar_augment)
    images = jax.random.uniform(jax.random.key(1), (batch, 32, 32, 3))
    labels = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
    data, rows = (images, labels), np.tile(np.arange(batch), (steps, 1))
    starts = E.init_members(model, jax.random.key(3), members)
    init = jax.jit(jax.vmap(lambda v, s: init_train_state(model, optimizer, jax.random.key(0), s, variables=v)))

    def timed(run, state):
        times = []
        for first in range(2):
            start = time.perf_counter()
            state, metrics = run(state, data, rows, jax.random.key(0), np.int32(first * steps), ())
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
        return times[0], times[1] / steps

    stacked = timed(scan_steps(map_models(step, (0, None, None, None))), init(starts, states))
    run = scan_steps(step)
    compile_s, per_step = 0.0, 0.0
    for m in range(members):
        state = jax.tree.map(lambda a: a[m], init(starts, states))
        c, s = timed(run, state)
        compile_s, per_step = (c if m == 0 else compile_s), per_step + s
    return {"stacked (one program)": stacked, "sequential (N runs)": (compile_s, per_step)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(f"backend {jax.default_backend()}, N = {args.members}, width {args.width}, batch {args.batch}")
    inf = inference(args.members, args.width, args.batch, args.repeats)
    for name, (c, s) in inf.items():
        print(f"inference {name:12s}: {s * 1e3:8.2f} ms  (compile {c:.1f} s)")
    print(f"ensemble / plain split: {inf['ensemble'][1] / inf['plain split'][1]:.2f}x the time "
          f"(overhead {inf['ensemble'][1] / inf['plain split'][1] - 1:+.1%})")
    print(f"ratio python loop / ensemble: {inf['python loop'][1] / inf['ensemble'][1]:.2f} (target >= 1)")
    tr = training(args.members, args.width, args.batch, args.steps)
    for name, (c, s) in tr.items():
        print(f"stage 1 {name:22s}: {s:7.3f} s/step  (compile {c:.1f} s)")
    print(f"ratio sequential / stacked: {tr['sequential (N runs)'][1] / tr['stacked (one program)'][1]:.2f} "
          f"(target >= 1)")


if __name__ == "__main__":
    main()
