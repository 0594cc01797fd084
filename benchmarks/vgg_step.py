"""Benchmark: one training step of CEM's `vgg11_bn_sgm`, mijax vs PyTorch eager on the same CPU.

    python benchmarks/vgg_step.py [--batch 128] [--steps 5] [--rounds 3] [--torch-python PATH]
                                  [--threads N]

Step: CIFAR-shaped random data (batch 128, 32×32×3, 10 classes), the CEM training objective:
edge → z + σε (σ = 0.1) → cloud → cross-entropy + λ·L_CEM (λ = 8, on a fixed random mixture of
10 classes × 5 components; PyTorch computes it with the authors' loops), SGD (lr 0.05, momentum 0.9, weight
decay 5e-4 added to the gradient), BatchNorm and dropout in train mode. mijax runs `make_train_step`
as `fit` does: `--steps` steps per dispatch inside one `lax.scan` (`mijax.train.fit_loop`'s
program), the state donated; PyTorch (`benchmarks/torch_vgg_step.py`, a separate virtualenv with
torch, path from `--torch-python` or `$MIJAX_TORCH_PYTHON`) runs the same network eagerly with
`torch.set_num_threads(os.cpu_count())`, in the same run, as a second process that stays up:
`--rounds` rounds of `--steps` steps alternate between the two (on a shared machine the load
drifts), after warm-up; the ratio is the median over rounds of the per-step times.

Target: mijax at least as fast as PyTorch (ratio PyTorch / mijax ≥ 1). Each convolution runs in the
plan `mijax.conv.plan_conv` chooses for its shape; `benchmarks/conv_forms.py` times every form per
layer. Results: BENCHMARKS.md.
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

from mijax.defenses import Mixture, cem_with_noise
from mijax.models import vgg
from mijax.train import scan_steps, init_train_state, make_train_step

HERE = pathlib.Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--torch-python", default=os.environ.get("MIJAX_TORCH_PYTHON", "/work/torchvenv/bin/python"))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    model = vgg.vgg11_bn_sgm()
    optimizer = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.05, momentum=0.9))
    defense = cem_with_noise(lam=8.0, sigma=0.1, num_classes=10, feature_dim=512, samples_per_class=5000)
    key = jax.random.key(1)
    mixture = Mixture(means=jax.random.uniform(key, (10, 5, 512)), weights=jnp.full((10, 5), 0.2),
                      variances=jnp.full((10, 5), 0.01), counts=jnp.full((10, 5), 1000, jnp.int32))
    noise_state, cem_state = defense.init()
    defense_state = (noise_state, {**cem_state, "mixture": mixture, "fitted": jnp.ones((), jnp.float32)})
    run = scan_steps(make_train_step(model, optimizer, defense))
    rng = np.random.default_rng(0)
    data = (jnp.asarray(rng.uniform(size=(args.batch, 32, 32, 3)), jnp.float32),
            jnp.asarray(rng.integers(0, 10, args.batch), jnp.int32))
    rows = np.tile(np.arange(args.batch), (args.steps, 1))
    state = init_train_state(model, optimizer, jax.random.key(0), defense_state)

    def steps(state, first_step):
        start = time.perf_counter()
        state, metrics = run(state, data, rows, jax.random.key(0), np.int32(first_step), ())
        jax.block_until_ready(metrics)
        return state, (time.perf_counter() - start) / args.steps

    start = time.perf_counter()
    state, _ = steps(state, 0)
    print(f"backend {jax.default_backend()}, jax {jax.__version__}, batch {args.batch}, {args.threads} threads, "
          f"{args.rounds} rounds of {args.steps} steps each (one dispatch per round)")
    print(f"mijax compile + first dispatch: {time.perf_counter() - start:.1f} s")

    torch = subprocess.Popen([args.torch_python, str(HERE / "torch_vgg_step.py"), str(args.batch),
                              str(args.threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if torch.stdout.readline().strip() != "ready":
        raise RuntimeError("the PyTorch baseline did not start")
    mijax_times, torch_times, ratios = [], [], []
    try:
        for r in range(args.rounds):  # alternate the frameworks: the machine's load drifts
            time.sleep(0.5)  # let the other process's threads stop spinning
            state, per_step = steps(state, (r + 1) * args.steps)
            times = [per_step]
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


if __name__ == "__main__":
    main()
