"""Benchmark: He et al.'s white-box rMLE attack, mijax vs the same algorithm in PyTorch (CPU).

    python benchmarks/rmle.py [--images 64] [--steps 500] [--torch-python PATH]

Attack: 64 CIFAR-10 test images at cut relu22 of CIFAR10CNN, 500 iterations of the authors' code
variant (normalised space from the mean, mean-squared feature loss, squared TV with λ = 10, PyTorch
AMSGrad lr 1e-2 eps 1e-3), same weights and targets in both. The PyTorch baseline runs in a separate
virtualenv (`pip install torch==2.13.0`; path from `--torch-python` or `$MIJAX_TORCH_PYTHON`) in the
same run, timed both as the authors' script runs (one image at a time) and with all images batched.
Also times the σ sweep (5 noise levels): one program in each `mijax.stacks` mode against a Python loop
of 5 calls of the same compiled attack (dispatched asynchronously, and with each call awaited). Times exclude compilation and warm-up (the first call).
Targets: mijax ≥ 2× faster than the PyTorch loop (the authors' one image at a time); the vmapped
sweep at least as fast as the loop.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from mijax import data, metrics
from mijax.attacks import RMLEConfig, WhiteBox, rmle
from mijax.stacks import STACK_MODES, map_models
from mijax.models import cifar10cnn

HERE = pathlib.Path(__file__).resolve().parent


def _timed(fn, *args, repeats=1):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return out, first, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--sweep-images", type=int, default=16)
    parser.add_argument("--torch-python", default=os.environ.get("MIJAX_TORCH_PYTHON", "/work/torchvenv/bin/python"))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    images = data.load("cifar10", f"test[:{args.images}]").images
    model = cifar10cnn(cut="relu22")
    variables = model.init(jax.random.key(0))
    z, _ = model.edge_apply(variables, images)
    knowledge = WhiteBox.from_model(model, variables)
    config = RMLEConfig(num_steps=args.steps, learning_rate=1e-2, tv_weight=10.0, legacy_eps=False)  # torch 2.13's rule
    attack = jax.jit(lambda z: rmle(knowledge, z, config=config))
    x_jax, first_s, jax_s = _timed(attack, z)
    print(f"backend {jax.default_backend()}, {args.images} images, {args.steps} steps, {args.threads} threads")
    print(f"mijax   : {jax_s:7.2f} s  (first call, compilation included: {first_s:.1f} s)")

    with tempfile.TemporaryDirectory() as tmp:
        inp, out = pathlib.Path(tmp, "in.npz"), pathlib.Path(tmp, "out.npz")
        params = variables["params"]
        layers = ["conv11", "conv12", "conv21", "conv22"]
        np.savez(inp, z=np.asarray(z), mean=np.float32(model.normalization.mean),
                 std=np.float32(model.normalization.std), steps=args.steps, lr=1e-2, tv_weight=10.0,
                 threads=args.threads,
                 **{f"kernel{i}": np.asarray(params[n]["conv"]["kernel"]) for i, n in enumerate(layers)},
                 **{f"bias{i}": np.asarray(params[n]["conv"]["bias"]) for i, n in enumerate(layers)})
        subprocess.run([args.torch_python, str(HERE / "torch_rmle.py"), str(inp), str(out)], check=True)
        result = np.load(out)
        torch_s, loop_s, x_torch = float(result["seconds"]), float(result["per_image_seconds"]), result["x_hat"]
    print(f"PyTorch, one image at a time (the authors' loop): {loop_s:7.2f} s")
    print(f"PyTorch, all images in one batch                : {torch_s:7.2f} s "
          f"(max |difference| to the loop {float(result['batch_gap']):.1e})")
    print(f"speed-up over the authors' loop: {loop_s / jax_s:.2f}x  (target >= 2x); "
          f"over batched PyTorch: {torch_s / jax_s:.2f}x")
    gap = np.abs(np.asarray(x_jax) - x_torch)
    print(f"parity  : max |x_mijax - x_torch| = {gap.max():.2e}, mean {gap.mean():.2e}; "
          f"SSIM to original mijax {float(np.mean(metrics.ssim(np.asarray(x_jax), images))):.4f}, "
          f"PyTorch {float(np.mean(metrics.ssim(x_torch, images))):.4f}")

    sigmas = jnp.array([0.0, 0.1, 0.25, 0.5, 1.0])
    zs = z[:args.sweep_images]
    noisy = zs + sigmas[:, None, None, None, None] * jax.random.normal(jax.random.key(1), (5, *zs.shape))
    single = jax.jit(lambda z: rmle(knowledge, z, config=config))
    _, _, loop_s = _timed(lambda zz: [single(zi) for zi in zz], noisy)
    _, _, awaited_s = _timed(lambda zz: [jax.block_until_ready(single(zi)) for zi in zz], noisy)
    print(f"sigma sweep ({len(sigmas)} values, {args.sweep_images} images): Python loop {loop_s:.2f} s "
          f"(each call awaited before the next: {awaited_s:.2f} s)")
    for mode in STACK_MODES:
        sweep = jax.jit(map_models(lambda z: rmle(knowledge, z, config=config), (0,), mode=mode,
                                   stacked_weights=False))
        _, _, sweep_s = _timed(sweep, noisy)
        print(f"  one program ({mode:6s}): {sweep_s:.2f} s, ratio {loop_s / sweep_s:.2f}x  (target >= 1x)")


if __name__ == "__main__":
    main()
