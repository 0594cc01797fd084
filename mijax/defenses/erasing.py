"""Random erasing as a defense against model inversion (Tran et al., TMLR 2025, "Random Erasing vs.
Model Inversion: A Promising Defense or a False Hope?", arXiv 2409.01062; MIDRE code).

The defended model trains exactly as the undefended one; only its training inputs change: every
training image (p = 1) gets one square region (aspect 1) at a uniformly random location erased to a
constant, with the erased area fraction a ~ U[0.1, 0.4]. The rectangle follows torchvision's
`RandomErasing.get_params` (Zhong et al., AAAI 2020, Alg. 1), up to `max_attempts` = 10 attempts:

    erase with probability p; then for each attempt
        a ~ U[area₀, area₁],   r = exp(u),  u ~ U[log aspect₀, log aspect₁]
        h = round(√(a·H·W·r)),  w = round(√(a·H·W / r))         (round half to even, as Python)
        if h < H and w < W:  top ~ U{0..H−h},  left ~ U{0..W−w};  erase [top, top+h) × [left, left+w)
    and leave the image unchanged when no attempt fits.

In the reference the erasing follows `Normalize(0.5, 0.5)`, so the fill (0.485, 0.456, 0.406) is a
value of the normalised space. Erasing replaces pixels, so erasing the normalised image with `fill`
equals erasing the [0, 1] image with `normalization.denormalize(fill)` before the edge normalises:
that is what the defense does (`fill_space="normalized"`, with the model's normalisation from its
`DefenseSpec`). Inference inputs are never erased.

Static shapes throughout: all attempts are drawn at once per image and the first valid one taken; the
mask is built from `iota` comparisons, no dynamic slicing.

Example:
    >>> x_erased = erase(images, key, p=1.0, area=(0.1, 0.4), aspect=(1.0, 1.0), fill=(0.0,))
    >>> state = mijax.train.fit(model, images, labels, defense=random_erasing(fill=(0.485,)), ...)
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mijax import checks
from mijax.defenses.base import Defense

LOCATIONS = ("random", "center")
FILL_SPACES = ("normalized", "pixel")
REFERENCE_FILL = (0.485, 0.456, 0.406)


class Boxes(NamedTuple):
    """The erased rectangle of each image: `top`, `left`, `height`, `width` (int32 `[batch]`) and
    `erased` (bool `[batch]`: False when the gate said no or no attempt fitted; the box is then 0)."""

    top: jax.Array
    left: jax.Array
    height: jax.Array
    width: jax.Array
    erased: jax.Array


class Draws(NamedTuple):
    """The uniform [0, 1) numbers one image's erasing consumes: `gate` `[]`, and per attempt `area`,
    `ratio`, `row`, `col` `[max_attempts]`. `erasing_draws` makes them; tests replay them in NumPy."""

    gate: jax.Array
    area: jax.Array
    ratio: jax.Array
    row: jax.Array
    col: jax.Array


def erasing_draws(key: jax.Array, max_attempts: int) -> Draws:
    """The uniforms of one image's erasing, from its own key (five independent streams)."""
    keys = jax.random.split(key, 5)
    gate = jax.random.uniform(keys[0], ())
    area, ratio, row, col = (jax.random.uniform(k, (max_attempts,)) for k in keys[1:])
    return Draws(gate, area, ratio, row, col)


def _check_range(name: str, pair, *, positive: bool) -> tuple:
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise ValueError(f"expected {name} as a pair (low, high), got {pair!r}")
    if checks.is_concrete(pair):
        low, high = (float(np.asarray(v)) for v in pair)
        if not (np.isfinite(low) and np.isfinite(high)) or low > high or (positive and low <= 0) \
                or (not positive and low < 0):
            bound = "0 < low" if positive else "0 <= low"
            raise ValueError(f"expected {name} = (low, high) with {bound} <= high, got {tuple(pair)}")
    return tuple(pair)


def _check_settings(p, area, aspect, max_attempts, location):
    checks.check_scalar("p", p, high=1.0)
    area = _check_range("area", area, positive=False)
    aspect = _check_range("aspect", aspect, positive=True)
    if not isinstance(max_attempts, (int, np.integer)) or max_attempts < 1:
        raise ValueError(f"expected max_attempts to be an int >= 1, got {max_attempts!r}")
    if location not in LOCATIONS:
        raise ValueError(f"expected location in {LOCATIONS}, got {location!r}")
    return area, aspect


def _box(draws: Draws, height: int, width: int, p, area, log_aspect, location: str):
    """One image's rectangle from its draws (torchvision's `get_params`, all attempts at once)."""
    total = float(height * width)
    erase_area = total * (area[0] + (area[1] - area[0]) * draws.area)
    ratio = jnp.exp(log_aspect[0] + (log_aspect[1] - log_aspect[0]) * draws.ratio)
    h = jnp.round(jnp.sqrt(erase_area * ratio)).astype(jnp.int32)
    w = jnp.round(jnp.sqrt(erase_area / ratio)).astype(jnp.int32)
    valid = (h < height) & (w < width)
    first = jnp.argmax(valid)                       # the first attempt that fits (0 if none does)
    fits = jnp.any(valid)
    h, w = h[first], w[first]
    if location == "random":   # torch.randint(0, H − h + 1): uniform over the H − h + 1 positions
        top = jnp.minimum(jnp.floor(draws.row[first] * (height - h + 1)).astype(jnp.int32), height - h)
        left = jnp.minimum(jnp.floor(draws.col[first] * (width - w + 1)).astype(jnp.int32), width - w)
    else:                      # the fixed-location ablation: the square at the centre
        top, left = (height - h) // 2, (width - w) // 2
    erased = (draws.gate < p) & fits
    zero = jnp.zeros((), jnp.int32)
    return Boxes(*(jnp.where(erased, v, zero) for v in (top, left, h, w)), erased)


def erasing_boxes(key: jax.Array, batch: int, height: int, width: int, *, p, area, aspect=(1.0, 1.0),
                  max_attempts: int = 10, location: str = "random") -> Boxes:
    """The rectangles `erase` would erase for `batch` images of `height`×`width` (image i uses the key
    `jax.random.split(key, batch)[i]`). Arguments as in `erase`."""
    area, aspect = _check_settings(p, area, aspect, max_attempts, location)
    return _boxes(key, jnp.asarray(p, jnp.float32), jnp.asarray(area, jnp.float32),
                  jnp.asarray(aspect, jnp.float32), batch=batch, height=height, width=width,
                  max_attempts=max_attempts, location=location)


@functools.partial(jax.jit, static_argnames=("batch", "height", "width", "max_attempts", "location"))
def _boxes(key, p, area, aspect, *, batch, height, width, max_attempts, location):
    keys = jax.random.split(key, batch)
    log_aspect = jnp.log(aspect)
    return jax.vmap(lambda k: _box(erasing_draws(k, max_attempts), height, width, p, area, log_aspect,
                                   location))(keys)


def box_mask(boxes: Boxes, height: int, width: int) -> jax.Array:
    """bool `[batch, height, width]`: True inside each image's erased rectangle (iota comparisons)."""
    rows = jax.lax.broadcasted_iota(jnp.int32, (1, height, width), 1)
    cols = jax.lax.broadcasted_iota(jnp.int32, (1, height, width), 2)
    b = lambda v: v[:, None, None]
    return (b(boxes.erased) & (rows >= b(boxes.top)) & (rows < b(boxes.top + boxes.height))
            & (cols >= b(boxes.left)) & (cols < b(boxes.left + boxes.width)))


def _fill_vector(fill, channels: int) -> jax.Array:
    fill = jnp.atleast_1d(jnp.asarray(fill, jnp.float32))
    if fill.ndim != 1 or fill.shape[0] not in (1, channels):
        raise ValueError(f"expected fill as one value or one per channel ({channels}), got shape "
                         f"{tuple(fill.shape)}")
    return jnp.broadcast_to(fill, (channels,))


def erase(images: jax.typing.ArrayLike, key: jax.Array, *, p, area, aspect=(1.0, 1.0), fill,
          max_attempts: int = 10, location: str = "random") -> jax.Array:
    """Erases one rectangle per image with torchvision's `RandomErasing` algorithm (module docstring).

    Works in the images' own value space: `fill` is written as given.

    Args:
        images: `[batch, height, width, channels]`.
        key: PRNG key; image i draws from `jax.random.split(key, batch)[i]`.
        p: probability of erasing an image, in [0, 1] (1: every image; 0: none).
        area: `(low, high)` of the erased area fraction a ~ U[low, high] (0 <= low <= high).
        aspect: `(low, high)` of the aspect ratio h/w, log-uniform ((1, 1): squares).
        fill: one value, or one per channel.
        max_attempts: attempts before giving up (torchvision: 10); no fitting attempt, no erasure.
        location: "random" (torchvision) or "center" (the fixed-location ablation of MIDRE).

    Returns:
        The images with the rectangles set to `fill`, same shape and dtype.

    Raises:
        ValueError: on images that are not `[batch, height, width, channels]`, `p` outside [0, 1],
            bad ranges, a `fill` of the wrong length, or an unknown `location`.
    """
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected images of shape [batch, height, width, channels], got {tuple(images.shape)}")
    batch, height, width, channels = images.shape
    fill = _fill_vector(fill, channels).astype(images.dtype)
    area, aspect = _check_settings(p, area, aspect, max_attempts, location)
    return _erase(images, key, jnp.asarray(p, jnp.float32), jnp.asarray(area, jnp.float32),
                  jnp.asarray(aspect, jnp.float32), fill, max_attempts=max_attempts, location=location)


@functools.partial(jax.jit, static_argnames=("max_attempts", "location"))
def _erase(images, key, p, area, aspect, fill, *, max_attempts, location):
    batch, height, width, _ = images.shape
    boxes = _boxes(key, p, area, aspect, batch=batch, height=height, width=width, max_attempts=max_attempts,
                   location=location)
    return jnp.where(box_mask(boxes, height, width)[..., None], fill, images)


def random_erasing(*, p=1.0, area: Sequence = (0.1, 0.4), aspect: Sequence = (1.0, 1.0),
                   fill: Sequence[float] | float = REFERENCE_FILL, fill_space: str = "normalized",
                   max_attempts: int = 10, location: str = "random", normalization=None) -> Defense:
    """Random erasing of the training inputs (Tran et al., TMLR 2025; MIDRE's configuration).

    An `input_transform` that runs only when `train` is True: every training batch is erased per
    sample (`erase`, fresh keys each step); evaluation, attacks' queries and inference see clean
    images. The settings live in the state (p, the ranges and the fill can be swept).

    Args:
        p: erasing probability (1.0: every training image, the reference).
        area: erased area fraction range (reference (0.1, 0.4); the alternative (0.1, 0.8)).
        aspect: aspect-ratio range ((1, 1): squares, the reference).
        fill: the constant, one value or one per channel (reference (0.485, 0.456, 0.406), a
            3-channel value: grayscale images need a one-value fill).
        fill_space: "normalized" (reference: `fill` lives in the model's normalised input space; the
            normalisation comes from the `DefenseSpec` that `mijax.train.fit` passes, or from
            `normalization`) or "pixel" (`fill` in [0, 1] pixel units).
        max_attempts: torchvision's 10.
        location: "random" (reference) or "center" (the fixed-location ablation).
        normalization: the model's `Normalization`, overriding the spec's.

    Returns:
        A `Defense` with `init` and `input_transform`.

    Raises:
        ValueError: on invalid settings; at `init`, on a fill whose length matches neither 1 nor the
            images' channels, or a normalised fill without a normalisation.
    """
    area, aspect = _check_settings(p, area, aspect, max_attempts, location)
    if fill_space not in FILL_SPACES:
        raise ValueError(f"expected fill_space in {FILL_SPACES}, got {fill_space!r}")
    fill = tuple(np.atleast_1d(np.asarray(fill, np.float32)).tolist())

    def init(key=None, spec=None):
        del key
        norm = normalization if normalization is not None else getattr(spec, "normalization", None)
        channels = None if spec is None else int(spec.input_shape[-1])
        vector = jnp.asarray(fill, jnp.float32)
        if channels is not None:
            vector = _fill_vector(vector, channels)
        if fill_space == "normalized":
            if norm is None:
                raise ValueError("expected a normalization for fill_space='normalized' (from the model's "
                                 "DefenseSpec, as mijax.train.fit passes it, or normalization=...); or use "
                                 "fill_space='pixel'")
            vector = vector * jnp.asarray(norm.std, jnp.float32) + jnp.asarray(norm.mean, jnp.float32)
        return {"p": jnp.asarray(p, jnp.float32), "area": jnp.asarray(area, jnp.float32),
                "aspect": jnp.asarray(aspect, jnp.float32), "fill": vector}

    def input_transform(state, x, key, *, train):
        if not train:
            return x
        return erase(x, key, p=state["p"], area=(state["area"][0], state["area"][1]),
                     aspect=(state["aspect"][0], state["aspect"][1]), fill=state["fill"],
                     max_attempts=max_attempts, location=location)

    return Defense(init=init, input_transform=input_transform)


def full_erasing(*, p, fill: Sequence[float] | float = REFERENCE_FILL, fill_space: str = "normalized",
                 normalization=None) -> Defense:
    """The full-erasure ablation of MIDRE: with probability p the whole training image becomes `fill`.

    With p = E[a] of `random_erasing`'s area range (0.25 for U[0.1, 0.4]) it erases the same expected
    number of pixels, but never part of an image. Arguments as in `random_erasing`.
    """
    checks.check_scalar("p", p, high=1.0)
    inner = random_erasing(p=p, fill=fill, fill_space=fill_space, normalization=normalization)

    def input_transform(state, x, key, *, train):
        if not train:
            return x
        keys = jax.random.split(key, x.shape[0])
        gate = jax.vmap(lambda k: erasing_draws(k, 1).gate)(keys) < state["p"]
        fill_vector = _fill_vector(state["fill"], x.shape[-1]).astype(x.dtype)
        return jnp.where(gate[:, None, None, None], fill_vector, x)

    return Defense(init=inner.init, input_transform=input_transform)
