"""Benchmark: each pass of a convolution in each form of `mijax.conv`, per layer shape (milliseconds).

    python benchmarks/conv_forms.py [--scan] [--reps 5] [--shapes he|vgg|all]

For every shape the models run, times the forward pass, the input gradient and the weight gradient
in the forms ``xla``, ``shift`` and ``im2col`` (median of `--reps` jitted calls), marks the fastest
of each pass, and prints the plan `mijax.conv.plan_conv` chooses, so that its rules can be checked
against the measurement on the installed JAX and backend. `--scan` also times each pass inside a `lax.scan`
body (8 iterations, per iteration), where training steps and attack iterations run.
"""

from __future__ import annotations

import argparse
import jax
import jax.numpy as jnp

from mijax import conv
from xla_cpu_findings import ms  # the median-of-runs timer (this folder is on sys.path)

# (name, batch, height, width, in, out, kernel, stride, padding)
HE = [
    ("cifar10cnn conv11 B16", 16, 32, 32, 3, 64, 3, 1, 1),
    ("cifar10cnn conv12 B16", 16, 32, 32, 64, 64, 3, 1, 1),
    ("cifar10cnn conv21 B16", 16, 16, 16, 64, 128, 3, 1, 1),
    ("cifar10cnn conv22 B16", 16, 16, 16, 128, 128, 3, 1, 1),
    ("cifar10cnn conv12 B128", 128, 32, 32, 64, 64, 3, 1, 1),
    ("cifar10cnn conv22 B128", 128, 16, 16, 128, 128, 3, 1, 1),
    ("cifar10cnn conv32 B128", 128, 8, 8, 128, 128, 3, 1, 1),
    ("decoder conv 64->3 B32", 32, 32, 32, 64, 3, 3, 1, 1),
]
VGG = [
    ("vgg conv1 B128", 128, 32, 32, 3, 64, 3, 1, 1),
    ("vgg conv3 B128", 128, 16, 16, 64, 128, 3, 1, 1),
    ("vgg bottleneck B128", 128, 8, 8, 128, 8, 3, 1, 1),
    ("vgg expand B128", 128, 8, 8, 8, 128, 3, 1, 1),
    ("vgg conv5 B128", 128, 8, 8, 128, 256, 3, 1, 1),
    ("vgg conv6 B128", 128, 8, 8, 256, 256, 3, 1, 1),
    ("vgg conv8 B128", 128, 4, 4, 256, 512, 3, 1, 1),
    ("vgg conv9 B128", 128, 4, 4, 512, 512, 3, 1, 1),
    ("vgg conv11 B128", 128, 2, 2, 512, 512, 3, 1, 1),
    ("resnet20 down B128", 128, 32, 32, 16, 32, 3, 2, 1),
    ("critic 5x5/2 B64", 64, 32, 32, 3, 64, 5, 2, 2),
]


def _passes(stride, padding, form, shape):
    kshape = shape
    return {
        "forward": lambda x, k, dy: conv._forward(x, k, stride, padding, form),
        "input grad": lambda x, k, dy: conv._input_grad(dy, k, x.shape, stride, padding, form),
        "weight grad": lambda x, k, dy: conv._weight_grad(x, dy, kshape, stride, padding, form),
    }


def _in_scan(fn, iterations=8):
    def run(x, k, dy):
        def body(carry, _):
            x, dy = carry
            out = fn(x, k, dy)  # feed a scalar of the output back so nothing is loop-invariant
            nudge = 1e-9 * jnp.mean(out)
            return (x + nudge, dy + nudge), None
        (x, _), _ = jax.lax.scan(body, (x, dy), None, length=iterations)
        return x
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scan", action="store_true")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--shapes", choices=["he", "vgg", "all"], default="all")
    args = parser.parse_args()
    shapes = {"he": HE, "vgg": VGG, "all": HE + VGG}[args.shapes]
    print(f"backend {jax.default_backend()}, jax {jax.__version__}; milliseconds, median of {args.reps}")
    for name, b, h, w, cin, cout, k, stride, padding in shapes:
        key = jax.random.key(0)
        x = jax.random.normal(key, (b, h, w, cin))
        kernel = jax.random.normal(key, (k, k, cin, cout)) * 0.05
        dy = jax.random.normal(key, conv._xla(x, kernel, stride, padding).shape)
        plan = conv.plan_conv(x.shape, kernel.shape, stride=stride, padding=padding)
        print(f"{name}: {h}x{w} {cin}->{cout} k{k} s{stride}; plan {tuple(plan)}")
        contexts = [("jit", lambda f: f)] + ([("scan", _in_scan)] if args.scan else [])
        for context, wrap in contexts:
            for pass_name in ("forward", "input grad", "weight grad"):
                row = {}
                for form in conv.FORMS:
                    legal = conv._legal(conv.ConvPlan(form, form, form), kernel.shape, stride, padding)
                    if legal[["forward", "input grad", "weight grad"].index(pass_name)] != form:
                        continue
                    fn = jax.jit(wrap(_passes(stride, padding, form, kernel.shape)[pass_name]))
                    per = 8 if context == "scan" else 1
                    row[form] = ms(fn, x, kernel, dy, runs=args.reps, per=per)
                best = min(row, key=row.get)
                cells = "  ".join(f"{f} {t:8.2f}{'*' if f == best else ' '}" for f, t in row.items())
                print(f"  {context:4s} {pass_name:11s} {cells}")


if __name__ == "__main__":
    main()
