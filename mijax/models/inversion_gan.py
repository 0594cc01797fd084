"""GAN priors for training-data inversion (GMI, KEDMI): small generators and critics.

- `mlp_generator` / `mlp_critic`: fully connected WGAN-GP pair (Gulrajani et al. 2017's MNIST MLPs in
  spirit), fast on CPUs: the tests' and the smoke runs' prior;
- `kedmi_discriminator`: KEDMI's (K+1)-class discriminator (Chen et al., ICCV 2021) as a conv trunk
  (GMI's `DGWGAN32` convolutions, without instance norm), whose flattened output is the named layer
  `"features"` (the generator's feature-matching target) and whose head gives K logits; the (K+1)-th
  "fake" logit is implicit (0), as in the reference (`log_sum_exp` of the K logits).
  `mlp_critic(outputs=K, minibatch=(64, 50))` is its fully connected version. Both end, as the
  reference's `MinibatchDiscriminator`, in a minibatch-discrimination layer (Salimans et al. 2016)
  before the head: without it the feature-matching generator collapses to one image (measured).

The conv generator of the priors is `mijax.models.decoder_for((latent_dim,), image_shape)`.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mijax.nn import Conv2d, Layer, Linear, Sequential, pure


class MinibatchDiscrimination(nnx.Module):
    """Salimans et al. 2016, §3.2 (KEDMI's `MinibatchDiscrimination`): M_i = f_i·T reshaped to
    `[kernels, kernel_dims]`; o(x_i)_b = Σ_{j≠i} exp(−‖M_{i,b} − M_{j,b}‖₁); output `[f_i, o(x_i)]`.
    T ~ N(0, 1) as in the reference."""

    def __init__(self, in_features: int, kernels: int, kernel_dims: int, *, rngs: nnx.Rngs):
        self.tensor = nnx.Param(jax.random.normal(rngs.params(), (in_features, kernels * kernel_dims)))
        self.kernels, self.kernel_dims = kernels, kernel_dims

    def __call__(self, x, *, train=False, key=None):
        m = (x @ self.tensor[...]).reshape(x.shape[0], self.kernels, self.kernel_dims)
        norm = jnp.sum(jnp.abs(m[None] - m[:, None]), -1)         # [batch, batch, kernels]
        return jnp.concatenate([x, jnp.sum(jnp.exp(-norm), 0) - 1.0], -1)


def _shape(image_shape) -> tuple[int, int, int]:
    image_shape = tuple(int(d) for d in image_shape)
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ValueError(f"expected image_shape (height, width, channels), got {image_shape}")
    return image_shape


def _linear(name, fin, fout):
    return Layer(name, pure(lambda rngs: Linear(fin, fout, rngs=rngs)))


def mlp_generator(*, latent_dim: int, image_shape: Sequence[int], hidden: Sequence[int] = (256, 512)) -> Sequential:
    """`z [batch, latent_dim] -> images [batch, *image_shape]` in (0, 1): Linear+ReLU per hidden
    width, then Linear to the pixels and a sigmoid."""
    image_shape = _shape(image_shape)
    if latent_dim < 1 or not hidden or min(hidden) < 1:
        raise ValueError(f"expected latent_dim >= 1 and positive hidden widths, got {latent_dim}, {tuple(hidden)}")
    sizes = (latent_dim, *hidden)
    layers = []
    for i, (fin, fout) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [_linear(f"fc{i + 1}", fin, fout), Layer(f"relu{i + 1}", jax.nn.relu)]
    layers += [_linear("out", sizes[-1], math.prod(image_shape)), Layer("sigmoid", jax.nn.sigmoid),
               Layer("reshape", lambda x: x.reshape(x.shape[0], *image_shape))]
    return Sequential(tuple(layers))


def mlp_critic(*, image_shape: Sequence[int], hidden: Sequence[int] = (512, 256), outputs: int = 1,
               minibatch: tuple[int, int] | None = None) -> Sequential:
    """`images -> scores [batch]` (outputs 1, a WGAN critic) or `-> logits [batch, outputs]` (KEDMI's
    K-logit discriminator); Linear + LeakyReLU(0.2) per hidden width, the last one named `"features"`,
    then (with `minibatch=(kernels, kernel_dims)`) minibatch discrimination, then the head. Without
    minibatch discrimination examples stay independent (a gradient penalty is well defined)."""
    image_shape = _shape(image_shape)
    if outputs < 1 or not hidden or min(hidden) < 1:
        raise ValueError(f"expected outputs >= 1 and positive hidden widths, got {outputs}, {tuple(hidden)}")
    sizes = (math.prod(image_shape), *hidden)
    layers = []
    for i, (fin, fout) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [_linear(f"fc{i + 1}", fin, fout), Layer(f"lrelu{i + 1}", lambda x: jax.nn.leaky_relu(x, 0.2))]
    layers.append(Layer("features", lambda x: x))
    width = sizes[-1]
    if minibatch is not None:
        layers.append(_minibatch(width, minibatch))
        width += minibatch[0]
    layers.append(_linear("head", width, outputs))
    if outputs == 1:
        layers.append(Layer("score", lambda x: x.reshape(x.shape[0])))
    return Sequential(tuple(layers))


def _minibatch(features: int, minibatch) -> Layer:
    kernels, dims = minibatch
    if kernels < 1 or dims < 1:
        raise ValueError(f"expected minibatch = (kernels, kernel_dims) >= 1, got {minibatch}")
    return Layer("minibatch", pure(lambda rngs: MinibatchDiscrimination(features, kernels, dims, rngs=rngs)))


def kedmi_discriminator(*, image_shape: Sequence[int], num_classes: int, width: int = 64,
                        minibatch: tuple[int, int] = (64, 50)) -> Sequential:
    """KEDMI's discriminator: Conv5×5 s2 (c→w, 2w, 4w) each with LeakyReLU(0.2), flattened as
    `"features"`, minibatch discrimination (64 kernels of 50 dimensions), then Linear to `num_classes`
    logits (the K real classes; fake is the implicit K+1-th)."""
    height, wide, channels = _shape(image_shape)
    if num_classes < 1 or width < 1:
        raise ValueError(f"expected num_classes >= 1 and width >= 1, got {num_classes}, {width}")
    lrelu = lambda x: jax.nn.leaky_relu(x, 0.2)
    layers, cin = [], channels
    for i, cout in enumerate((width, 2 * width, 4 * width)):
        layers += [Layer(f"conv{i + 1}", pure(lambda rngs, a=cin, b=cout: Conv2d(a, b, 5, stride=2, padding=2, rngs=rngs))),
                   Layer(f"lrelu{i + 1}", lrelu)]
        cin = cout
        height, wide = (height - 1) // 2 + 1, (wide - 1) // 2 + 1
    features = height * wide * cin
    layers += [Layer("features", lambda x: x.reshape(x.shape[0], -1)), _minibatch(features, minibatch),
               _linear("head", features + minibatch[0], num_classes)]
    return Sequential(tuple(layers))
