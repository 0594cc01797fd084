"""Steps per second on 1, 2, 4 and 8 devices of a mesh's data axis: fit steps, the σ×λ grid, rMLE.

    python benchmarks/scaling.py [--devices 1,2,4,8] [--width 0.25] [--batch 64] [--dispatches 3]

Each device count runs in its own process (`XLA_FLAGS=--xla_force_host_platform_device_count=N`
on CPU; on a GPU/TPU host the real devices, `--devices` capped at what exists). For every workload it
reports steps/s over `--dispatches` scanned dispatches of 4 steps after a warm-up dispatch, and the
compiled program's cache size after them (1 = no recompilation per step).

What fake CPU devices can show: that one device costs what mijax costs without a mesh (the first
column against `mesh=None`), that sharding never recompiles, and the overhead of splitting a batch.
They cannot show a speed-up: the fake devices share the machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _worker(devices: int, args) -> dict:
    import jax
    import numpy as np
    import optax

    from mijax import defenses
    from mijax import mesh as meshes
    from mijax.attacks import RMLEConfig, WhiteBox, rmle
    from mijax.models import cifar10cnn, vgg11_bn_sgm
    from mijax.stacks import map_models
    from mijax.train import init_train_state, make_train_step, scan_steps

    mesh = None if devices == 0 else meshes.make_mesh(f"data:{devices}", devices=jax.devices()[:devices])
    put = (lambda x: x) if mesh is None else (lambda x: meshes.replicate(x, mesh))
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(args.batch, 32, 32, 3)).astype(np.float32)
    labels = (np.arange(args.batch) % 10).astype(np.int32)
    optimizer = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.05, momentum=0.9))
    rows = np.tile(np.arange(args.batch), (4, 1))
    result = {}

    def time_steps(name, step, state, stacked=False):
        run = scan_steps(step, mesh=mesh)
        if mesh is not None:
            state = meshes.shard(state, mesh, meshes.stacked_sharding(mesh)) if stacked else put(state)
        data = put((images, labels))
        durations = []
        for d in range(args.dispatches + 1):
            start = time.perf_counter()
            state, metrics = run(state, data, put(rows), put(jax.random.key(0)), put(np.int32(4 * d)), ())
            jax.block_until_ready(metrics)
            durations.append(time.perf_counter() - start)
        result[name] = {"steps_per_s": 4 * args.dispatches / sum(durations[1:]), "compiles": run._cache_size()}

    for name, model in (("fit cifar10cnn", cifar10cnn()),
                        ("fit vgg11_bn_sgm", vgg11_bn_sgm(width_multiplier=args.width))):
        step = make_train_step(model, optimizer)
        time_steps(name, step, init_train_state(model, optimizer, jax.random.key(0)))

    model = vgg11_bn_sgm(width_multiplier=args.width)
    noise = defenses.gaussian_noise(sigma=0.0)
    states = defenses.stack([defenses.gaussian_noise(sigma=s).init() for s in (0.01, 0.05, 0.1, 0.15)])
    grid = map_models(make_train_step(model, optimizer, noise), (0, None, None, None))
    init = jax.jit(jax.vmap(lambda s: init_train_state(model, optimizer, jax.random.key(0), s)))
    time_steps("sigma grid (4 models)", grid, init(states))

    model = cifar10cnn(cut="relu22")
    variables = model.init(jax.random.key(0))
    z = model.edge_apply(variables, images)[0]
    config = RMLEConfig(num_steps=50, learning_rate=0.05, tv_weight=0.05, optimizer="adam", space="pixel", eps=1e-8)
    attack = jax.jit(lambda k, z: rmle(k, z, config=config))
    knowledge = WhiteBox.from_model(model, variables)
    if mesh is not None:
        knowledge, z = put(knowledge), meshes.shard(z, mesh)
    durations = []
    for _ in range(args.dispatches + 1):
        start = time.perf_counter()
        jax.block_until_ready(attack(knowledge, z))
        durations.append(time.perf_counter() - start)
    result[f"rMLE ({args.batch} images)"] = {"steps_per_s": 50 * args.dispatches / sum(durations[1:]),
                                             "compiles": attack._cache_size()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="1,2,4,8")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dispatches", type=int, default=3)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(_worker(args.worker, args)))
        return

    columns = {"no mesh": 0, **{f"{n} dev": n for n in map(int, args.devices.split(","))}}
    results = {}
    for label, n in columns.items():
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={max(n, 1)}"}
        out = subprocess.run([sys.executable, __file__, "--worker", str(n), "--width", str(args.width),
                              "--batch", str(args.batch), "--dispatches", str(args.dispatches)],
                             env=env, capture_output=True, text=True, check=True)
        results[label] = json.loads(out.stdout.strip().splitlines()[-1])
    names = list(results["no mesh"])
    print(f"steps/s (compiled programs after the run), batch {args.batch}, vgg width {args.width}")
    print(f"{'workload':26s}" + "".join(f"{label:>16s}" for label in columns))
    for name in names:
        cells = [f"{results[c][name]['steps_per_s']:9.2f} ({results[c][name]['compiles']})" for c in columns]
        print(f"{name:26s}" + "".join(f"{cell:>16s}" for cell in cells))


if __name__ == "__main__":
    main()
