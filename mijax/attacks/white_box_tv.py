"""SiftFunnel's white-box attack (Liu et al., arXiv 2501.00824; code `white_box_attack.py`;
siftfunnel.md "Attacks used for evaluation"):

    x̂ = argmin_x  MSE(f(x), z) + λ_TV·√TV(x),      x̂₀ ~ N(0, 1) in pixel space,

SGD (lr 0.01, momentum 0.9), 500 iterations, λ_TV = 1e3, clamped to [0, 1] at the end. The batch is
optimised jointly: the MSE is over the whole batch and TV is the batch mean of the per-image
anisotropic total variation, so the images are coupled as in the reference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mijax.attacks.knowledge import WhiteBox


def total_variation(x: jax.Array) -> jax.Array:
    """Batch mean of Σ|x_{i+1,j} − x_{i,j}| + Σ|x_{i,j+1} − x_{i,j}| per image (NHWC)."""
    dh = jnp.abs(x[:, 1:] - x[:, :-1]).reshape(x.shape[0], -1).sum(1)
    dw = jnp.abs(x[:, :, 1:] - x[:, :, :-1]).reshape(x.shape[0], -1).sum(1)
    return jnp.mean(dh + dw)


def white_box_tv_attack(knowledge: WhiteBox, z: jax.typing.ArrayLike, *, key: jax.Array, steps: int = 500,
                        learning_rate: float = 0.01, momentum: float = 0.9, tv_weight: float = 1e3) -> jax.Array:
    """Reconstructs images `[batch, H, W, C]` in [0, 1] from the observed features `z` `[batch, ...]`.

    Args:
        knowledge: the white-box edge (`WhiteBox.from_model`).
        z: the observed (transmitted) features.
        key: draws the N(0, 1) start.
        steps, learning_rate, momentum, tv_weight: the reference's 500, 0.01, 0.9, 1e3.

    Raises:
        ValueError: for steps < 1 or a negative weight.
    """
    if steps < 1 or learning_rate <= 0 or tv_weight < 0:
        raise ValueError(f"expected steps >= 1, learning_rate > 0, tv_weight >= 0, got {steps}, "
                         f"{learning_rate}, {tv_weight}")
    z = jnp.asarray(z)
    x0 = jax.random.normal(key, (z.shape[0], *knowledge.input_shape))
    optimizer = optax.sgd(learning_rate, momentum=momentum)

    def objective(x):
        return jnp.mean(jnp.square(knowledge.edge(x) - z)) + tv_weight * jnp.sqrt(total_variation(x) + 1e-12)

    def step(carry, _):
        x, state = carry
        grads = jax.grad(objective)(x)
        updates, state = optimizer.update(grads, state, x)
        return (optax.apply_updates(x, updates), state), None

    (x, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=steps))((x0, optimizer.init(x0)))
    return jnp.clip(x, 0.0, 1.0)
