"""Benchmark: training He et al.'s ReLU22 inverse network, mijax vs the same model and loop in PyTorch (CPU).

    python benchmarks/inverse_network.py [--images 2048] [--epochs 1] [--variants col2im,subpixel_matmul,...]
                                         [--torch-python PATH] [--threads N] [--breakdown]

Model and loop: the authors' CIFAR10CNNDecoderReLU22 (ConvT(128→64, k3, s2, p1, op1) → ReLU →
ConvT(64→3, k3, p1)) on CIFAR10CNN relu22 features of real CIFAR-10 training images, batch 32,
PyTorch AMSGrad lr 1e-3 eps 1e-3 halved every 10 epochs, MSE against normalised images — in mijax
`train_inverse_network` (the library's loop: `fit_loop`, 16 steps per dispatch in a `lax.scan`) and in
PyTorch a plain loop over the same batches from the same initial weights (separate virtualenv with
torch 2.13, path from `--torch-python` or `$MIJAX_TORCH_PYTHON`, run in the same process tree).
Throughput is steady state: images per second over all steps after the first dispatch (compilation
and warm-up excluded). The transposed convolutions compute the same function in every variant:

- `col2im` (the CPU default, `method="auto"`): one matmul to k²·out channels, shifted adds, pixel shuffle;
- `subpixel_matmul`, `subpixel`: stride-1 conv with ⌈k/s⌉² taps to s²·out channels + pixel shuffle;
- `dilated`: XLA's native transposed conv (lhs-dilated conv), as `jax.lax.conv_transpose` does;
- `resize`, `pixelshuffle`: for reference, `decoder_for`'s generic decoders (width 64, not the paper's).

Parity: the initial decoders' outputs on the first batch, and the weights after training
(same init, same batches), are compared with PyTorch's.
Target: mijax (col2im) >= 1x PyTorch's throughput for the paper's architecture.
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
import optax

from mijax import data
from mijax.attacks import InverseNetworkConfig, train_inverse_network
from mijax.models import cifar10cnn, decoder_for, he2019_decoder
from mijax.train import features

HERE = pathlib.Path(__file__).resolve().parent
VARIANTS = {
    "col2im": lambda: he2019_decoder("relu22", "cifar10", method="col2im"),
    "subpixel_matmul": lambda: he2019_decoder("relu22", "cifar10", method="subpixel", matmul=True),
    "subpixel": lambda: he2019_decoder("relu22", "cifar10", method="subpixel"),
    "dilated": lambda: he2019_decoder("relu22", "cifar10", method="dilated"),
    "resize": lambda: decoder_for((16, 16, 128), (32, 32, 3), width=64, upsample="resize", output="linear"),
    "pixelshuffle": lambda: decoder_for((16, 16, 128), (32, 32, 3), width=64, upsample="subpixel",
                                        output="linear"),
}


def _train(decoder, z, images, config, key):
    """Trains with the library's loop; returns (trained, seconds per step after the first)."""
    marks = {}

    def callback(step, state):  # after each dispatch of steps; time from the end of the first
        if "start" not in marks:
            jax.block_until_ready(state)
            marks["start"], marks["first"] = time.perf_counter(), step

    trained = train_inverse_network(decoder, z, images, config=config, key=key, callback=callback,
                                    progress=False)
    jax.block_until_ready(trained.variables)
    steps = config.epochs * (len(images) // config.batch_size)
    return trained, (time.perf_counter() - marks["start"]) / (steps - marks["first"])


def _batch_order(key, num, config):
    # the order `train_inverse_network` -> `fit_loop` draws: key -> (init, loop) -> (order, steps)
    order_key = jax.random.split(jax.random.split(key)[1])[0]
    steps_per_epoch = num // config.batch_size
    rows = []
    for epoch in range(config.epochs):
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(order_key, epoch), num))
        rows += [perm[i * config.batch_size:(i + 1) * config.batch_size] for i in range(steps_per_epoch)]
    return np.stack(rows)


def breakdown(z, images, steps: int = 16) -> None:
    """Milliseconds per step, inside a `lax.scan`, of each transposed convolution's forward pass and
    the gradients training needs, at batch 32 (col2im), against the whole training step."""
    from mijax.models.decoders import conv_transpose
    from mijax.optim import torch_amsgrad
    from mijax.train import scan_steps

    def per_step(fn, *args):
        run = jax.jit(lambda c, *rest: jax.lax.scan(lambda c, _: (fn(c, *rest), None), c, None, length=steps)[0])
        jax.block_until_ready(run(*args))
        start = time.perf_counter()
        jax.block_until_ready(run(*args))
        return 1e3 * (time.perf_counter() - start) / steps

    key = jax.random.key(0)
    # (input shape, kernel shape, settings, whether training needs the input gradient)
    layers = {"deconv11 128->64 k3 s2 (16x16 -> 32x32)":
              ((32, 16, 16, 128), (3, 3, 128, 64), dict(stride=2, padding=1, output_padding=1), False),
              "deconv21 64->3 k3 s1 (32x32)": ((32, 32, 32, 64), (3, 3, 64, 3), dict(padding=1), True)}
    total = 0.0
    for name, (x_shape, k_shape, kw, input_grad) in layers.items():
        x, w = jax.random.normal(key, x_shape), 0.05 * jax.random.normal(key, k_shape)
        loss = lambda x, w, kw=kw: jnp.sum(conv_transpose(x, w, method="col2im", **kw) ** 2)
        grads = jax.grad(loss, (0, 1) if input_grad else (1,))

        def step(w, x, grads=grads):
            g = grads(x, w)
            return w - 1e-6 * g[-1] - (1e-9 * jnp.mean(g[0]) if len(g) == 2 else 0.0)
        ms = per_step(step, w, x)
        total += ms
        print(f"  {name:40s}: {ms:6.2f} ms  (forward + {'both gradients' if input_grad else 'weight gradient'})")
    decoder = he2019_decoder("relu22", "cifar10")
    config = InverseNetworkConfig(normalization=cifar10cnn().normalization)
    optimizer = torch_amsgrad(config.learning_rate, eps=config.eps)
    variables = decoder.init(key)
    target = jnp.asarray(images[:32])

    def train_step(state, z, key):
        params, opt_state = state
        loss = lambda p: jnp.mean((decoder.apply({**variables, "params": p}, z)[0] - target) ** 2)
        updates, opt_state = optimizer.update(jax.grad(loss)(params), opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), {}
    run = scan_steps(train_step)
    def fresh():  # the program donates its state: new buffers for every call
        return jax.tree.map(lambda a: jnp.array(a, copy=True),
                            (variables["params"], optimizer.init(variables["params"])))
    data_z, rows = (jnp.asarray(z[:32]),), np.tile(np.arange(32), (steps, 1))
    jax.block_until_ready(run(fresh(), data_z, rows, key, np.int32(0), ()))
    state = fresh()
    start = time.perf_counter()
    jax.block_until_ready(run(state, data_z, rows, key, np.int32(0), ()))
    step_ms = 1e3 * (time.perf_counter() - start) / steps
    print(f"  whole training step (scanned)           : {step_ms:6.2f} ms; the two layers {total:.2f} ms, "
          f"the rest (bias, ReLU, loss, AMSGrad, batch gather) {step_ms - total:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--data-dir",
                        default=os.environ.get("MIJAX_DATA_DIR", str(HERE.parent.parent / "shared" / "data")))
    parser.add_argument("--torch-python",
                        default=os.environ.get("MIJAX_TORCH_PYTHON", "/work/torchvenv/bin/python"))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--breakdown", action="store_true", help="time each layer inside a scan")
    args = parser.parse_args()

    images = data.load("cifar10", f"train[:{args.images}]", data_dir=args.data_dir).images
    model = cifar10cnn(cut="relu22")
    z = features(model, model.init(jax.random.key(0)), images)
    config = InverseNetworkConfig(epochs=args.epochs, normalization=model.normalization,
                                  legacy_eps=False)  # the PyTorch side runs torch 2.13's rule
    key = jax.random.key(1)
    order = _batch_order(key, len(images), config)
    print(f"backend {jax.default_backend()}, {len(images)} images, batch 32, {len(order)} steps, "
          f"{args.threads} threads")
    if args.breakdown:
        breakdown(z, images)

    results, trained_col2im = {}, None
    for name in args.variants.split(","):
        trained, seconds = _train(VARIANTS[name](), z, images, config, key)
        results[name] = 32 / seconds
        if name == "col2im":
            trained_col2im = trained
        print(f"mijax {name:16s}: {results[name]:8.1f} images/s  ({1e3 * seconds:.1f} ms/step)")

    paper = he2019_decoder("relu22", "cifar10")
    initial = paper.init(jax.random.split(key)[0])      # what train_inverse_network initialises
    params = initial["params"]
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = pathlib.Path(tmp, "in.npz"), pathlib.Path(tmp, "out.npz")
        np.savez(inp, z=z, target=np.asarray(model.normalization.normalize(images)), order=order,
                 steps_per_epoch=len(images) // 32, halve_every=config.halve_every, lr=config.learning_rate,
                 eps=config.eps, threads=args.threads,
                 kernel0=params["deconv11"]["kernel"], bias0=params["deconv11"]["bias"],
                 kernel1=params["deconv21"]["kernel"], bias1=params["deconv21"]["bias"])
        subprocess.run([args.torch_python, str(HERE / "torch_inverse_network.py"), str(inp), str(out)], check=True)
        result = np.load(out)
    torch_rate = 32 / float(result["seconds_per_step"])
    print(f"PyTorch {'':15s}: {torch_rate:8.1f} images/s  ({1e3 * float(result['seconds_per_step']):.1f} ms/step)")
    for name, rate in results.items():
        target = "  (target >= 1x)" if name == "col2im" else ""
        print(f"ratio mijax {name} / PyTorch: {rate / torch_rate:.2f}x{target}")

    first, _ = jax.jit(paper.apply)(initial, z[order[0]])
    print(f"parity, initial decoder on the first batch: max |mijax - torch| = "
          f"{np.abs(np.asarray(first) - result['first']).max():.2e}")
    if trained_col2im is not None:
        final = trained_col2im.variables["params"]
        gap = max(np.abs(np.asarray(final["deconv11"]["kernel"]) - result["kernel0"]).max(),
                  np.abs(np.asarray(final["deconv21"]["kernel"]) - result["kernel1"]).max())
        print(f"parity, weights after {len(order)} steps: max |mijax - torch| = {gap:.2e} "
              f"(initial weights span ±{np.abs(np.asarray(params['deconv11']['kernel'])).max():.2e}); "
              f"PyTorch final batch MSE {float(result['final_loss']):.4f}")


if __name__ == "__main__":
    main()
