"""2-D convolutions (NHWC input, HWIO kernel) in the form that is fastest for each shape.

One function, `conv2d`, computes a cross-correlation with symmetric zero padding; a `ConvPlan` says
how its forward pass, input gradient and weight gradient are computed:

- ``"xla"``: `lax.conv_general_dilated`; each gradient is written as another plain NHWC/HWIO
  convolution (the input gradient: `dy` with the flipped kernel; the weight gradient: the padded
  input, channels as batch, with `dy` as the kernel).
- ``"shift"``: "flat shifts". The padded input is flattened to rows `[B·Hp·Wp, C]`; kernel tap
  `(i, j)` reads the rows shifted by `i·Wp + j`, so the convolution is a sum of `kh·kw` matrix
  products of contiguous row windows. Outputs are computed on the whole padded grid and cropped, a
  waste of `Hp·Wp / (Ho·Wo)` (1.13× at 32×32, 2.25× at 4×4), in exchange for slices that are plain
  row ranges. Stride 1 only.
- ``"im2col"``: the `kh·kw` shifted (strided) windows concatenated into patches, then one matrix
  product; exact FLOPs, any stride.

All three compute the same function, with hand-written gradients (`jax.custom_vjp`) and never
JAX's own convolution-transpose rules: XLA-CPU runs JAX's weight-gradient rule 75× slower inside a
`lax.scan` body than in a plain jitted step (886 vs 11.8 ms at batch 16, 32×32, 64→64) and its
input-gradient rule 20× slower (`benchmarks/xla_cpu_findings.py`), while the forms here cost about the same in both places (at most
1.5× more inside the loop, and often less). Training steps and attack iterations run inside
`lax.scan`, so the rules are measured there (`python benchmarks/conv_forms.py --scan`).

`plan_conv` holds the measured rules that choose a plan from the shapes, so model code never picks
a form itself.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

Form = Literal["xla", "shift", "im2col"]
FORMS: tuple[str, ...] = ("xla", "shift", "im2col")
_NHWC = ("NHWC", "HWIO", "NHWC")


class ConvPlan(NamedTuple):
    """How one convolution is computed: the form of the forward pass and of each gradient."""

    forward: Form = "xla"
    input_grad: Form = "xla"
    weight_grad: Form = "shift"


_STACKED = contextvars.ContextVar("mijax_conv_stacked", default=False)


@contextlib.contextmanager
def stacked_kernels():
    """While tracing under this context, convolutions plan for kernels batched by `vmap`.

    `vmap` over stacked models turns `lax.conv` into a grouped convolution, which XLA-CPU ran about
    2.7× slower than the batched matrix products of the im2col form (the 11-25 `benchmarks/cem_grid.py`
    run in git history, before it timed the stack modes).
    `mijax.stacks.map_models` enters it; nothing else needs to.
    """
    token = _STACKED.set(True)
    try:
        yield
    finally:
        _STACKED.reset(token)


def plan_conv(x_shape, kernel_shape, *, stride: int = 1, padding: int = 0,
              backend: str | None = None, stacked: bool | None = None) -> ConvPlan:
    """The measured-fastest `ConvPlan` for these shapes on `backend` (default: JAX's default backend).

    The rules (`_cpu_rule`, `_accelerator_rule`) come from `python benchmarks/conv_forms.py --scan` on
    the installed JAX (its output is in BENCHMARKS.md). `stacked` (default: inside `stacked_kernels`)
    plans for a kernel batched by `vmap`. Forms that do not apply to a shape (``"shift"`` with
    stride > 1, ``"xla"`` input gradients with stride > 1 or padding ≥ kernel size) become
    ``"im2col"``.
    """
    backend = backend or jax.default_backend()
    stacked = _STACKED.get() if stacked is None else stacked
    batch, height, width, _ = x_shape
    kh, kw, cin, cout = kernel_shape
    out_h = (height + 2 * padding - kh) // stride + 1
    out_w = (width + 2 * padding - kw) // stride + 1
    rule = _cpu_rule if backend == "cpu" else _accelerator_rule
    plan = rule(batch, out_h * out_w, cin, cout, stacked)
    return _legal(plan, kernel_shape, stride, padding)


def _cpu_rule(batch: int, pixels: int, cin: int, cout: int, stacked: bool) -> ConvPlan:
    # XLA-CPU, jax 0.12, 2 cores, timed inside `lax.scan` (where training steps and attack iterations
    # run). lax.conv is the fastest forward pass except on 2×2 maps (100× slower there), and the fastest
    # input gradient except on maps of ≤ 4×4; weight gradients are matrix products except for few
    # output channels.
    if stacked:
        return ConvPlan("im2col", "im2col", "im2col")
    forward = "im2col" if pixels <= 4 else "xla"
    input_grad = "im2col" if pixels <= 16 else "xla"
    if cout < 16:
        weight_grad = "xla"
    elif batch * pixels >= 65536 and cin >= 32:
        weight_grad = "shift"
    else:
        weight_grad = "im2col"
    return ConvPlan(forward, input_grad, weight_grad)


def _accelerator_rule(batch: int, pixels: int, cin: int, cout: int, stacked: bool) -> ConvPlan:
    # Not measured yet (no accelerator has been lent): the vendor's convolution kernels, each
    # gradient as a plain convolution.
    return ConvPlan("xla", "xla", "xla")


def _legal(plan: ConvPlan, kernel_shape, stride: int, padding: int) -> ConvPlan:
    kh, kw = kernel_shape[:2]

    def fix(form, slot):
        if form == "shift" and stride != 1:
            return "im2col"
        if slot == "input_grad" and form == "xla" and (stride != 1 or padding > min(kh, kw) - 1):
            return "im2col"
        return form

    return ConvPlan(*(fix(form, slot) for slot, form in zip(ConvPlan._fields, plan)))


def conv2d(x: jax.Array, kernel: jax.Array, *, stride: int = 1, padding: int = 0,
           plan: ConvPlan | None = None) -> jax.Array:
    """Cross-correlation of NHWC `x` with an HWIO `kernel`, symmetric zero `padding`, square `stride`.

    Values equal `lax.conv_general_dilated`'s (to float rounding) in every plan; `plan` defaults to
    `plan_conv`'s choice for these shapes.
    """
    if x.ndim != 4 or kernel.ndim != 4 or x.shape[-1] != kernel.shape[2]:
        raise ValueError(f"expected x [batch, height, width, {kernel.shape[2] if kernel.ndim == 4 else 'C'}]"
                         f" and kernel [kh, kw, in, out], got x {x.shape} and kernel {kernel.shape}")
    if plan is None:
        plan = plan_conv(x.shape, kernel.shape, stride=stride, padding=padding)
    else:
        plan = _legal(ConvPlan(*plan), kernel.shape, stride, padding)
    return _conv(x, kernel, stride, padding, plan)


# --- the three forms ---------------------------------------------------------------------------------


def _pad(x, padding):
    return jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))


def _xla(x, kernel, stride, padding):
    pads = ((padding, padding), (padding, padding))
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), pads, dimension_numbers=_NHWC)


def im2col(x: jax.Array, kernel_height: int, kernel_width: int, *, stride: int = 1) -> jax.Array:
    """The patches of a VALID convolution over an (already padded) NHWC `x`: `[batch, h, w, kh·kw·C]`,
    tap-major (row-major over the kernel window), channel-minor."""
    h = (x.shape[1] - kernel_height) // stride + 1
    w = (x.shape[2] - kernel_width) // stride + 1
    return jnp.concatenate(
        [x[:, i:i + stride * (h - 1) + 1:stride, j:j + stride * (w - 1) + 1:stride, :]
         for i in range(kernel_height) for j in range(kernel_width)], axis=-1)


class _Grid(NamedTuple):
    """The flat padded grid of the "shift" form."""

    batch: int
    height: int      # padded
    width: int       # padded
    out_h: int
    out_w: int
    offsets: tuple[int, ...]

    @property
    def rows(self) -> int:
        return self.batch * self.height * self.width

    @property
    def reach(self) -> int:
        return self.offsets[-1]


def _grid(x_shape, kernel_shape, padding) -> _Grid:
    b, h, w, _ = x_shape
    kh, kw = kernel_shape[:2]
    hp, wp = h + 2 * padding, w + 2 * padding
    return _Grid(b, hp, wp, hp - kh + 1, wp - kw + 1,
                 tuple(i * wp + j for i in range(kh) for j in range(kw)))


def _rows(x, grid: _Grid, padding):
    """`x` padded and flattened to `[rows + reach, C]` (the tail rows are zeros that shifts read)."""
    flat = _pad(x, padding).reshape(grid.rows, x.shape[-1])
    return jnp.pad(flat, ((0, grid.reach), (0, 0)))


def _full_grid(y, grid: _Grid):
    """Output-space `y` `[B, Ho, Wo, O]` placed on the padded grid, zeros elsewhere, as `[rows, O]`."""
    y = jnp.pad(y, ((0, 0), (0, grid.height - grid.out_h), (0, grid.width - grid.out_w), (0, 0)))
    return y.reshape(grid.rows, y.shape[-1])


def _shift(x, kernel, padding):
    grid = _grid(x.shape, kernel.shape, padding)
    rows = _rows(x, grid, padding)
    taps = kernel.reshape(len(grid.offsets), kernel.shape[2], kernel.shape[3])
    y = sum(rows[o:o + grid.rows] @ taps[t] for t, o in enumerate(grid.offsets))
    return y.reshape(grid.batch, grid.height, grid.width, -1)[:, :grid.out_h, :grid.out_w]


def _im2col(x, kernel, stride, padding):
    kh, kw, _, cout = kernel.shape
    return im2col(_pad(x, padding), kh, kw, stride=stride) @ kernel.reshape(-1, cout)


def _forward(x, kernel, stride, padding, form):
    if form == "xla":
        return _xla(x, kernel, stride, padding)
    if form == "shift":
        return _shift(x, kernel, padding)
    return _im2col(x, kernel, stride, padding)


def _input_grad(dy, kernel, x_shape, stride, padding, form):
    kh, kw, cin, cout = kernel.shape
    if form == "xla":  # stride 1: the plain convolution of dy with the flipped, transposed kernel
        flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
        pads = ((kh - 1 - padding,) * 2, (kw - 1 - padding,) * 2)
        return jax.lax.conv_general_dilated(dy, flipped, (1, 1), pads, dimension_numbers=_NHWC)
    if form == "shift":  # the same sum of shifted products, shifts reversed: dx[p] = Σ_t dy[p − o_t]·K_tᵀ
        grid = _grid(x_shape, kernel.shape, padding)
        g = jnp.pad(_full_grid(dy, grid), ((grid.reach, 0), (0, 0)))
        taps = kernel.reshape(len(grid.offsets), cin, cout).swapaxes(1, 2)
        start = [grid.reach - o for o in grid.offsets]
        dx = sum(g[s:s + grid.rows] @ taps[t] for t, s in enumerate(start))
        dx = dx.reshape(grid.batch, grid.height, grid.width, cin)
        return dx[:, padding:grid.height - padding, padding:grid.width - padding]
    # im2col: patch gradients, folded back by the transpose of the patch extraction (pads and adds)
    cols = dy @ kernel.reshape(-1, cout).T
    b, h, w, _ = x_shape
    padded = jax.ShapeDtypeStruct((b, h + 2 * padding, w + 2 * padding, cin), dy.dtype)
    dxp = jax.linear_transpose(lambda xp: im2col(xp, kh, kw, stride=stride), padded)(cols)[0]
    return dxp[:, padding:padding + h, padding:padding + w]


def _weight_grad(x, dy, kernel_shape, stride, padding, form):
    kh, kw, cin, cout = kernel_shape
    if form == "xla":  # a plain NHWC/HWIO convolution: input channels as the batch, images as features
        out = jax.lax.conv_general_dilated(
            _pad(x, padding).transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3), (1, 1), "VALID",
            rhs_dilation=(stride, stride), dimension_numbers=_NHWC)
        return out[:, :kh, :kw].transpose(1, 2, 0, 3)
    if form == "shift":
        grid = _grid(x.shape, kernel_shape, padding)
        rows, g = _rows(x, grid, padding), _full_grid(dy, grid)
        taps = [rows[o:o + grid.rows].T @ g for o in grid.offsets]
        return jnp.stack(taps).reshape(kernel_shape)
    cols = im2col(_pad(x, padding), kh, kw, stride=stride)
    return (cols.reshape(-1, kh * kw * cin).T @ dy.reshape(-1, cout)).reshape(kernel_shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, kernel, stride, padding, plan):
    return _forward(x, kernel, stride, padding, plan.forward)


def _conv_fwd(x, kernel, stride, padding, plan):
    return _forward(x, kernel, stride, padding, plan.forward), (x, kernel)


def _conv_bwd(stride, padding, plan, residuals, dy):
    x, kernel = residuals
    return (_input_grad(dy, kernel, x.shape, stride, padding, plan.input_grad),
            _weight_grad(x, dy, kernel.shape, stride, padding, plan.weight_grad))


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_as_matmul(x: jax.Array, kernel: jax.Array, *, stride: int = 1, padding: int = 0) -> jax.Array:
    """`conv2d` with every pass in the im2col form (patches + one matrix product)."""
    return conv2d(x, kernel, stride=stride, padding=padding, plan=ConvPlan("im2col", "im2col", "im2col"))
