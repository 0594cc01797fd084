"""Flax NNX modules as pure `init`/`apply` functions over plain-dict variables.

Everywhere outside `mijax/models/` a network is a pair of pure functions over a pytree

    variables = {"params": {...}, "batch_stats": {...}}

so that `jax.jit`, `jax.vmap`, `jax.grad` and `lax.scan` apply directly (no `nnx.jit` overhead, no NNX
state closed over inside a transform). The module graph is split once, abstractly, and merged again
inside each traced call, which costs nothing at run time.

A `Sequential` is an ordered list of named layers; cutting a network for split inference is then a
matter of running a range of names, and one trained network serves every cut point.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mijax.conv import ConvPlan, conv2d, conv_as_matmul, im2col  # noqa: F401 (re-exported)

Variables = dict[str, Any]


class Pure(NamedTuple):
    """A network as two pure functions.

    Attributes:
        init: `init(key) -> variables`.
        apply: `apply(variables, x, *, train=False, key=None) -> (y, new_variables)`; `new_variables`
            carries updated BatchNorm statistics when `train` is True.
    """

    init: Callable[[jax.Array], Variables]
    apply: Callable[..., tuple[jax.Array, Variables]]


def _to_variables(module: nnx.Module) -> Variables:
    _, params, stats = nnx.split(module, nnx.Param, nnx.BatchStat)
    return {"params": params.to_pure_dict(), "batch_stats": stats.to_pure_dict()}


def pure(make: Callable[[nnx.Rngs], nnx.Module]) -> Pure:
    """Turns an NNX module factory into a `Pure` pair.

    The module's `__call__` must accept `(x, *, train, key)`.

    Args:
        make: builds the module from `nnx.Rngs`, e.g. `lambda rngs: Conv2d(3, 64, 3, rngs=rngs)`.

    Returns:
        A `Pure` whose variables are plain nested dicts of arrays.
    """
    graphdef, abstract_params, abstract_stats = nnx.split(
        nnx.eval_shape(lambda: make(nnx.Rngs(0))), nnx.Param, nnx.BatchStat
    )

    def init(key: jax.Array) -> Variables:
        return _to_variables(make(nnx.Rngs(key)))

    def apply(variables: Variables, x: jax.Array, *, train: bool = False, key: jax.Array | None = None):
        params = jax.tree.map(lambda a: a, abstract_params)
        stats = jax.tree.map(lambda a: a, abstract_stats)
        nnx.replace_by_pure_dict(params, variables["params"])
        nnx.replace_by_pure_dict(stats, variables.get("batch_stats", {}))
        module = nnx.merge(graphdef, params, stats)
        y = module(x, train=train, key=key)
        if not train:
            return y, variables
        return y, {"params": variables["params"], "batch_stats": _to_variables(module)["batch_stats"]}

    return Pure(init, apply)


# --- layers with PyTorch's default initialisation (parity with the authors' code) -------------------


def _torch_uniform(fan_in: int) -> Callable:
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# PyTorch's kaiming_uniform(a=sqrt(5)) default equals variance_scaling(1/3, fan_in, uniform).
torch_kernel_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class Conv2d(nnx.Module):
    """A 2-D convolution, NHWC, PyTorch-default initialised (kernel and bias).

    Computed by `mijax.conv.conv2d` in the plan its measured rules choose for the input's shape;
    `plan` overrides them, and `matmul=True` is short for the all-im2col plan.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 padding: int = 0, use_bias: bool = True, kernel_init: Callable | None = None,
                 bias_init: Callable | None = None, matmul: bool = False, plan: ConvPlan | None = None,
                 rngs: nnx.Rngs):
        fan_in = in_channels * kernel_size * kernel_size
        self.stride, self.padding = stride, padding
        self.plan = ConvPlan("im2col", "im2col", "im2col") if matmul else plan
        self.conv = nnx.Conv(
            in_channels, out_channels, (kernel_size, kernel_size), strides=stride,
            padding=[(padding, padding)] * 2, use_bias=use_bias,
            kernel_init=kernel_init or torch_kernel_init, bias_init=bias_init or _torch_uniform(fan_in),
            rngs=rngs,
        )

    def __call__(self, x, *, train=False, key=None):
        y = conv2d(x, self.conv.kernel[...], stride=self.stride, padding=self.padding, plan=self.plan)
        return y if self.conv.bias is None else y + self.conv.bias[...]


class Linear(nnx.Module):
    """A dense layer on the flattened input, PyTorch-default initialised."""

    def __init__(self, in_features: int, out_features: int, *, kernel_init: Callable | None = None,
                 bias_init: Callable | None = None, rngs: nnx.Rngs):
        self.linear = nnx.Linear(
            in_features, out_features, kernel_init=kernel_init or torch_kernel_init,
            bias_init=bias_init or _torch_uniform(in_features), rngs=rngs,
        )

    def __call__(self, x, *, train=False, key=None):
        return self.linear(x.reshape(x.shape[0], -1))


class BatchNorm(nnx.Module):
    """BatchNorm with PyTorch's defaults (momentum 0.1 in PyTorch's convention, eps 1e-5)."""

    def __init__(self, num_features: int, *, rngs: nnx.Rngs):
        self.bn = nnx.BatchNorm(num_features, momentum=0.9, epsilon=1e-5, rngs=rngs)

    def __call__(self, x, *, train=False, key=None):
        return self.bn(x, use_running_average=not train)


class MemberSelector(nnx.Module):
    """Combines the outputs `[members, batch, ...]` of a stacked cloud into `[batch, ...]` as a weighted
    sum with learned weights (initially the mean): the client's secret selector (`SplitModel.members`)."""

    def __init__(self, members: int, *, rngs: nnx.Rngs):
        self.weights = nnx.Param(jnp.full((members,), 1.0 / members))

    def __call__(self, x, *, train=False, key=None):
        if x.shape[0] != self.weights.shape[0]:
            raise ValueError(f"expected [{self.weights.shape[0]}, batch, ...] member outputs, got {x.shape}")
        return jnp.tensordot(self.weights[...], x, axes=1)


def member_selector(members: int) -> Pure:
    """A `MemberSelector` as a `Pure` layer (the first layer of a client tail)."""
    return pure(lambda rngs: MemberSelector(members, rngs=rngs))


def max_pool(x: jax.Array, window: int = 2) -> jax.Array:
    """Max pooling over `window`×`window` blocks, stride `window` (floor), of `[batch, h, w, channels]`.

    The gradient goes to the first maximum of each window in row-major order, as in PyTorch; a window
    holding a NaN gives NaN, as `lax.reduce_window` does. Written as strided slices and elementwise
    selects: XLA-CPU runs its gradient 5-20× faster than the select-and-scatter of
    `lax.reduce_window`, which took about a tenth of a VGG training step. The taps are compared with
    each other, not with a maximum computed apart (XLA-CPU at O0 may compute the two differently).
    """
    height, width = x.shape[1] // window * window, x.shape[2] // window * window
    taps = [x[:, i:height:window, j:width:window] for i in range(window) for j in range(window)]
    best = taps[0]
    for tap in taps[1:]:
        best = jnp.where((tap > best) | jnp.isnan(tap), tap, best)
    return best


# --- named sequential networks ------------------------------------------------------------------------


class Layer(NamedTuple):
    """A named step of a `Sequential`: a `Pure` (with variables) or a stateless function of `x`."""

    name: str
    fn: Pure | Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Sequential:
    """An ordered list of named layers whose variables are keyed by layer name.

    `apply(..., start=a, stop=b)` runs the layers from `a` to `b` inclusive and reads only their
    variables, which is how `SplitModel` runs the edge and the cloud of one network.
    """

    layers: tuple[Layer, ...]

    def __post_init__(self):
        names = self.names
        if len(set(names)) != len(names):
            raise ValueError(f"layer names must be unique, got {names}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    def index(self, name: str) -> int:
        if name not in self.names:
            raise ValueError(f"unknown layer {name!r}; valid names: {', '.join(self.names)}")
        return self.names.index(name)

    def init(self, key: jax.Array) -> Variables:
        variables: Variables = {"params": {}, "batch_stats": {}}
        for i, layer in enumerate(self.layers):
            if isinstance(layer.fn, Pure):
                v = layer.fn.init(jax.random.fold_in(key, i))
                variables["params"][layer.name] = v["params"]
                variables["batch_stats"][layer.name] = v["batch_stats"]
        return variables

    def apply(self, variables: Variables, x: jax.Array, *, train: bool = False,
              key: jax.Array | None = None, start: str | None = None,
              stop: str | None = None) -> tuple[jax.Array, Variables]:
        y, variables, _ = self.apply_tapped(variables, x, train=train, key=key, start=start, stop=stop)
        return y, variables

    def apply_tapped(self, variables: Variables, x: jax.Array, *, train: bool = False,
                     key: jax.Array | None = None, start: str | None = None, stop: str | None = None,
                     taps: tuple[str, ...] = ()) -> tuple[jax.Array, Variables, dict[str, jax.Array]]:
        """`apply`, also returning `{name: output}` of the layers in `taps` that lie in the range."""
        first = 0 if start is None else self.index(start)
        last = len(self.layers) - 1 if stop is None else self.index(stop)
        for name in taps:
            self.index(name)
        new_stats = dict(variables.get("batch_stats", {}))
        tapped = {}
        for i in range(first, last + 1):
            layer = self.layers[i]
            if isinstance(layer.fn, Pure):
                sub = {"params": variables["params"][layer.name],
                       "batch_stats": variables.get("batch_stats", {}).get(layer.name, {})}
                layer_key = None if key is None else jax.random.fold_in(key, i)
                x, sub = layer.fn.apply(sub, x, train=train, key=layer_key)
                new_stats[layer.name] = sub["batch_stats"]
            else:
                x = layer.fn(x)
            if layer.name in taps:
                tapped[layer.name] = x
        return x, {**variables, "batch_stats": new_stats}, tapped

    def subset(self, variables: Variables, names: tuple[str, ...]) -> Variables:
        """The part of `variables` that belongs to `names`."""
        return {group: {n: v for n, v in tree.items() if n in names} for group, tree in variables.items()}

    def as_pure(self) -> Pure:
        return Pure(self.init, lambda variables, x, **kw: self.apply(variables, x, **kw))


def num_params(variables: Variables) -> int:
    """The number of trainable parameters."""
    return sum(int(a.size) for a in jax.tree.leaves(variables["params"]))
