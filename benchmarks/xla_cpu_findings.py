"""The XLA-CPU measurements behind BENCHMARKS.md's "XLA-CPU findings" (milliseconds, median of runs).

    python benchmarks/xla_cpu_findings.py [--flags] [--torch-python PATH]

1. A 3×3 64→64 convolution's input gradient (batch 16, 32×32) with JAX's own transpose rule and
   with `mijax.nn.conv2d`, in a plain jitted step and inside a `lax.scan` body.
2. Its weight gradient, with JAX's rule and with `mijax.nn.conv2d`, in a plain jitted step and
   inside a `lax.scan` body.
3. The gradient of 2×2 max pooling: `lax.reduce_window` (select-and-scatter) vs `mijax.nn.max_pool`.
4. One rMLE step (CIFAR10CNN relu22, the authors' variant) per image at batch 1, 4, 16, 64.
5. The weight gradient at batch 128 (64→64, 32×32): JAX's rule, each form of `mijax.conv`, and
   PyTorch's (oneDNN, in the torch virtualenv of the other benchmarks) if it is available.
6. Matrix-product throughput.
7. The gradient of the ReLU22 decoder's stride-1 transposed conv (64→3, batch 32, 32×32) by the
   col2im form's hand-written backward pass and by autodiff of the same forward.
8. The ReLU22 inverse network's training step (batch 32) jitted alone, to set against the
   per-step time `benchmarks/inverse_network.py` measures through `fit_loop`.
`--flags` re-runs (4) at batch 16 under XLA's oneDNN / XNNPACK / YNNPACK options, one process each.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mijax import conv as mconv, nn
from mijax.attacks import RMLEConfig, WhiteBox, rmle
from mijax.models import cifar10cnn, he2019_decoder
from mijax.models.decoders import _col2im
from mijax.optim import torch_amsgrad

FLAG_SETS = ["--xla_cpu_use_onednn=true", "--xla_cpu_use_thunk_runtime=false --xla_cpu_use_onednn=true",
             "--xla_cpu_use_xnnpack=false",
             "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
             "--xla_cpu_experimental_ynn_fusion_type=INDIVIDUAL_CONVOLUTION,ELTWISE,REDUCE,DOT"]
TORCH_WEIGHT_GRADIENT = """
import time, torch
torch.set_num_threads({threads})
x, dy, w = torch.randn(128, 64, 32, 32), torch.randn(128, 64, 32, 32), torch.randn(64, 64, 3, 3)
f = lambda: torch.ops.aten.convolution_backward(dy, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                                [False, True, False])
f(); ts = []
for _ in range(5):
    t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
print(sorted(ts)[2] * 1e3)
"""


def ms(fn, *args, runs=7, per=1):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times)) / per


def lax_conv(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def in_scan(step, length):
    return jax.jit(lambda c: jax.lax.scan(lambda c, _: (step(c), None), c, None, length=length)[0])


def rmle_step_ms(batch: int, steps: int = 20) -> float:
    model = cifar10cnn(cut="relu22")
    variables = model.init(jax.random.key(0))
    z, _ = model.edge_apply(variables, jax.random.uniform(jax.random.key(1), (batch, 32, 32, 3)))
    config = RMLEConfig(num_steps=steps, learning_rate=1e-2, tv_weight=10.0, legacy_eps=False)
    attack = jax.jit(lambda v, z: rmle(WhiteBox.from_model(model, v), z, config=config))
    return ms(attack, variables, z, runs=3, per=steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flags", action="store_true")
    parser.add_argument("--torch-python", default=os.environ.get("MIJAX_TORCH_PYTHON", "/work/torchvenv/bin/python"))
    parser.add_argument("--rmle-only", action="store_true", help=argparse.SUPPRESS)  # used by --flags
    args = parser.parse_args()
    if args.rmle_only:
        print(f"{rmle_step_ms(16) / 16:.2f}")
        return
    key = jax.random.key(0)
    x = jax.random.normal(key, (16, 32, 32, 64))
    kernel = 0.05 * jax.random.normal(jax.random.key(1), (3, 3, 64, 64))
    print(f"backend {jax.default_backend()}, {os.cpu_count()} threads; milliseconds")

    print("1. input gradient, B16 32x32 64->64 (one descent step: forward + input gradient)")
    for name, conv in (("JAX's rule", lax_conv), ("mijax.nn.conv2d", lambda x, k: nn.conv2d(x, k, padding=1))):
        step = lambda x: x - 0.01 * jax.grad(lambda x: jnp.sum(jnp.tanh(conv(x, kernel)) ** 2))(x)
        print(f"   {name:16s}: jitted step {ms(jax.jit(step), x):6.1f}   inside lax.scan "
              f"{ms(in_scan(step, 5), x, runs=3, per=5):6.1f}")

    print("2. weight gradient, same shapes (one descent step on the kernel)")
    for name, conv in (("JAX's rule", lax_conv), ("mijax.nn.conv2d", lambda x, k: nn.conv2d(x, k, padding=1))):
        step = lambda k: k - 0.01 * jax.grad(lambda k: jnp.sum(jnp.tanh(conv(x, k)) ** 2))(k)
        print(f"   {name:16s}: jitted step {ms(jax.jit(step), kernel):6.1f}   inside lax.scan "
              f"{ms(in_scan(step, 3), kernel, runs=1, per=3):8.1f}")

    print("3. 2x2 max pooling gradient, B16 32x32x64")
    for name, pool in (("lax.reduce_window", lambda h: nnx.max_pool(h, (2, 2), strides=(2, 2))),
                       ("mijax.nn.max_pool", nn.max_pool)):
        print(f"   {name:18s}: {ms(jax.jit(jax.grad(lambda h: jnp.sum(pool(h) ** 2))), x):6.2f}")

    print("4. rMLE step per image (CIFAR10CNN relu22, 20 iterations in one lax.scan)")
    print("   " + "   ".join(f"batch {b}: {rmle_step_ms(b) / b:.2f}" for b in (1, 4, 16, 64)))

    print("5. weight gradient, B128 32x32 64->64")
    big_x = jax.random.normal(key, (128, 32, 32, 64))
    big_dy = jax.random.normal(jax.random.key(2), (128, 32, 32, 64))
    rule = jax.jit(lambda x, dy: jax.vjp(lambda k: lax_conv(x, k), kernel)[1](dy)[0])
    line = f"   JAX's rule {ms(rule, big_x, big_dy, runs=3):6.1f}"
    for form in mconv.FORMS:
        fn = jax.jit(lambda x, dy: mconv._weight_grad(x, dy, kernel.shape, 1, 1, form))
        np.testing.assert_allclose(fn(big_x, big_dy), rule(big_x, big_dy), rtol=1e-3, atol=1e-1)
        line += f"   {form} {ms(fn, big_x, big_dy, runs=3):6.1f}"
    if os.path.exists(args.torch_python):
        out = subprocess.run([args.torch_python, "-c", TORCH_WEIGHT_GRADIENT.format(threads=os.cpu_count())],
                             capture_output=True, text=True, check=True).stdout
        line += f"   PyTorch (oneDNN) {float(out):6.1f}"
    print(line)

    print("6. matrix products (GFLOP/s)")
    for m, k, n in ((16384, 576, 64), (2048, 2048, 2048)):
        a, b = jax.random.normal(key, (m, k)), jax.random.normal(key, (k, n))
        print(f"   {m}x{k} @ {k}x{n}: {2 * m * k * n / ms(jax.jit(jnp.matmul), a, b) / 1e6:6.0f}")

    print("7. decoder's stride-1 transposed conv 64->3, B32 32x32: forward + gradients")
    h = jax.random.normal(key, (32, 32, 32, 64))
    w = 0.05 * jax.random.normal(key, (3, 3, 64, 3))
    for name, fn in (("hand-written backward", _col2im), ("autodiff", _col2im.fun)):
        grad = jax.jit(jax.grad(lambda h, w: jnp.sum(fn(h, w, 1, 1, 0) ** 2), (0, 1)))
        print(f"   {name:22s}: {ms(grad, h, w):6.2f}")

    print("8. ReLU22 inverse network training step, B32, jitted alone")
    decoder = he2019_decoder("relu22", "cifar10", method="col2im")
    variables = decoder.init(key)
    optimizer = torch_amsgrad(1e-3, eps=1e-3)
    z, target = jax.random.normal(key, (32, 16, 16, 128)), jax.random.uniform(key, (32, 32, 32, 3))

    @jax.jit
    def train_step(params, opt_state):
        loss = lambda p: jnp.mean((decoder.apply({**variables, "params": p}, z)[0] - target) ** 2)
        updates, opt_state = optimizer.update(jax.grad(loss)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    print(f"   {ms(train_step, variables['params'], optimizer.init(variables['params'])):6.1f}")

    if args.flags:
        print("rMLE step per image at batch 16 under XLA flags (one process each)")
        for flags in ["", *FLAG_SETS]:
            out = subprocess.run([sys.executable, __file__, "--rmle-only"], capture_output=True, text=True,
                                 check=True, env={**os.environ, "XLA_FLAGS": flags}).stdout
            print(f"   {out.strip():>6s}  {flags or '(defaults)'}")


if __name__ == "__main__":
    main()
