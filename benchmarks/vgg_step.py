"""Benchmark: one training step of CEM's `vgg11_bn_sgm`, mijax vs PyTorch eager on the same CPU.

    python benchmarks/vgg_step.py [--batch 128] [--steps 5] [--rounds 3] [--per-layer] [--no-matmul]
                                  [--torch-python PATH] [--threads N]

Step: CIFAR-shaped random data (batch 128, 32×32×3, 10 classes), the CEM training objective:
edge → z + σε (σ = 0.1) → cloud → cross-entropy + λ·L_CEM (λ = 8, on a fixed random mixture of
10 classes × 5 components; PyTorch computes it with the authors' loops), SGD (lr 0.05, momentum 0.9, weight
decay 5e-4 added to the gradient), BatchNorm and dropout in train mode. mijax runs `make_train_step`
under `jax.jit` with the train state donated; PyTorch (`benchmarks/torch_vgg_step.py`, a separate
virtualenv with torch, path from `--torch-python` or `$MIJAX_TORCH_PYTHON`) runs the same network
eagerly with `torch.set_num_threads(os.cpu_count())`, in the same run, as a second process that stays
up: `--rounds` rounds of `--steps` steps alternate between the two (on a shared machine the load
drifts), after warm-up; the ratio is the median over rounds of the per-round median step times.

`--per-layer` also times forward + backward of every 3×3 convolution of the network at its map
size with `lax.conv` and with the im2col matmul path (how `vgg.MATMUL_MAX_SIZE` was chosen), and
of each 2×2 max pooling with `lax.reduce_window` and with `mijax.nn.max_pool`.

Target: mijax at least as fast as PyTorch (ratio PyTorch / mijax ≥ 1). The obstacles are XLA-CPU's
convolution on tiny maps with many channels (DESIGN.md, performance notes; about 10 s per 512→512
convolution on a 2×2 map, forward + backward, against 0.1 s as a matmul), so the two convolutions on
2×2 maps use the matmul path (`matmul_small_maps=True`; on 4×4 and larger maps `lax.conv` is as fast
or faster), and the select-and-scatter gradient of `lax.reduce_window` max pooling (5-20× slower
than `mijax.nn.max_pool`). Results: BENCHMARKS.md (on a quiet 2-core CPU the target is not met yet).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mijax.defenses import Mixture, cem_with_noise
from mijax.models import vgg
from mijax.nn import conv_as_matmul, max_pool
from mijax.train import init_train_state, make_train_step

HERE = pathlib.Path(__file__).resolve().parent


def _median_time(fn, steps):
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _conv_grad(conv, input_grad):
    loss = lambda x, w: jnp.sum(conv(x, w) ** 2)
    return jax.jit(jax.grad(loss, argnums=(0, 1) if input_grad else 1))


def per_layer(model, batch: int, steps: int) -> None:
    """Forward + backward of each convolution of `model` at its map size, both implementations, and of
    the 2×2 max pooling (`lax.reduce_window` vs `mijax.nn.max_pool`)."""
    network = model.network
    variables = jax.eval_shape(model.init, jax.random.key(0))
    x = jax.ShapeDtypeStruct((batch, *model.input_shape), "float32")
    lax_conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
    matmul_conv = lambda x, w: conv_as_matmul(x, w, padding=1)
    print(f"\nper layer, batch {batch}, forward + backward (ms)")
    print("  layer       input map      lax.conv   matmul   (the model uses)")
    key = jax.random.key(0)
    shape = x.shape
    for index, name in enumerate(network.names):
        params = variables["params"].get(name, {})
        if "conv" in params and params["conv"]["kernel"].shape[0] == 3:
            kernel = params["conv"]["kernel"]
            h = jax.random.normal(key, shape)
            w = 0.01 * jax.random.normal(key, kernel.shape)
            times = []
            for conv in (lax_conv, matmul_conv):
                grad = _conv_grad(conv, input_grad=index > 0)  # the image needs no gradient
                jax.block_until_ready(grad(h, w))
                times.append(1e3 * _median_time(lambda: grad(h, w), steps))
            used = "matmul" if shape[1] <= vgg.MATMUL_MAX_SIZE else "lax.conv"
            print(f"  {name:10s} {shape[1]:2d}×{shape[2]:<2d}×{shape[3]:<4d}  {times[0]:9.1f} {times[1]:8.1f}   {used}")
        elif name.startswith("pool"):
            h = jax.random.normal(key, shape)
            times = []
            for pool in (lambda h: nnx.max_pool(h, (2, 2), strides=(2, 2)), max_pool):
                grad = jax.jit(jax.grad(lambda h: jnp.sum(pool(h) ** 2)))
                jax.block_until_ready(grad(h))
                times.append(1e3 * _median_time(lambda: grad(h), steps))
            print(f"  {name:10s} {shape[1]:2d}×{shape[2]:<2d}×{shape[3]:<4d}  {times[0]:9.1f} {times[1]:8.1f}   "
                  "(reduce_window / slices: mijax.nn.max_pool)")
        out = jax.eval_shape(lambda v, h: network.apply(v, h, start=name, stop=name)[0], variables,
                             jax.ShapeDtypeStruct(shape, "float32"))
        shape = out.shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-layer", action="store_true")
    parser.add_argument("--no-matmul", action="store_true", help="lax.conv everywhere")
    parser.add_argument("--torch-python", default=os.environ.get("MIJAX_TORCH_PYTHON", "/work/torchvenv/bin/python"))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    model = vgg.vgg11_bn_sgm(matmul_small_maps=not args.no_matmul)
    optimizer = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.05, momentum=0.9))
    defense = cem_with_noise(lam=8.0, sigma=0.1, num_classes=10, feature_dim=512, samples_per_class=5000)
    key = jax.random.key(1)
    mixture = Mixture(means=jax.random.uniform(key, (10, 5, 512)), weights=jnp.full((10, 5), 0.2),
                      variances=jnp.full((10, 5), 0.01), counts=jnp.full((10, 5), 1000, jnp.int32))
    noise_state, cem_state = defense.init()
    defense_state = (noise_state, {**cem_state, "mixture": mixture, "fitted": jnp.ones((), jnp.float32)})
    step = jax.jit(make_train_step(model, optimizer, defense), donate_argnums=0)
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(args.batch, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 10, args.batch).astype(np.int32)
    state = init_train_state(model, optimizer, jax.random.key(0), defense_state)

    start = time.perf_counter()
    state, metrics = step(state, images, labels, jax.random.key(0))
    jax.block_until_ready(metrics)
    first = time.perf_counter() - start
    print(f"backend {jax.default_backend()}, batch {args.batch}, {args.threads} threads, "
          f"matmul path {'off' if args.no_matmul else f'on maps <= {vgg.MATMUL_MAX_SIZE}²'}, "
          f"{args.rounds} rounds of {args.steps} steps each")
    print(f"mijax compile + first step: {first:.1f} s")

    torch = subprocess.Popen([args.torch_python, str(HERE / "torch_vgg_step.py"), str(args.batch),
                              str(args.threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if torch.stdout.readline().strip() != "ready":
        raise RuntimeError("the PyTorch baseline did not start")
    mijax_times, torch_times, ratios = [], [], []
    try:
        for r in range(args.rounds):  # alternate the frameworks: the machine's load drifts
            time.sleep(0.5)  # let the other process's threads stop spinning
            times = []
            for t in range(args.steps):
                start = time.perf_counter()
                state, metrics = step(state, images, labels, jax.random.key(1000 * r + t + 1))
                jax.block_until_ready(metrics)
                times.append(time.perf_counter() - start)
            torch.stdin.write(f"{args.steps}\n")
            torch.stdin.flush()
            baseline = [float(v) for v in torch.stdout.readline().split()]
            mijax_times += times
            torch_times += baseline
            ratios.append(np.median(baseline) / np.median(times))
            print(f"  round {r + 1}: mijax {1e3 * np.median(times):7.1f} ms, "
                  f"PyTorch {1e3 * np.median(baseline):7.1f} ms, ratio {ratios[-1]:.2f}")
    finally:
        torch.stdin.close()
        torch.wait()
    print(f"mijax   : {1e3 * np.median(mijax_times):8.1f} ms/step (median)")
    print(f"PyTorch : {1e3 * np.median(torch_times):8.1f} ms/step (median)")
    print(f"ratio PyTorch / mijax: {np.median(ratios):.2f} (median over rounds; target >= 1)")
    if args.per_layer:
        per_layer(model, args.batch, max(3, args.steps // 2))


if __name__ == "__main__":
    main()
