"""MINE: a Donsker–Varadhan lower bound on the mutual information I(x; z) (Belghazi et al., ICML 2018),
with SiftFunnel's statistics network (Liu et al., arXiv 2501.00824; code
`Mutual_Information_estimator.py`; siftfunnel.md "MINE estimator").

    Î = mean_b T(x_b, z_b) − log mean_b exp T(x_b, z_π(b)),    π a random permutation,

maximised over the statistics network T (no moving-average bias correction, as the reference). The
reference's T (`siftfunnel_critic`): z zero-padded right/bottom to the image size and concatenated
with x on channels, Conv3×3 (pad 1) 64 → 32 → 16 → 4 with tanh, a final sigmoid, the mean over
C, H, W. Because that T lies in (0, 1), Î < 1 nat: a comparative statistic only. `mlp_critic` is
unbounded (the test against the closed form of correlated Gaussians uses it).

The estimator trains with AdamW on (x, z) pairs (the target's training data) and is evaluated on
other pairs (the auxiliary data); one program trains all estimator seeds (`jax.vmap`), and every
`eval_every` steps the bound on the evaluation pairs is recorded; the reported value per seed is the
best of them (the reference keeps the epoch with the highest MI on the auxiliary set) or the last one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mijax.nn import Conv2d, Linear, Pure, pure


class _MLPCritic(nnx.Module):
    def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.l1, self.l2, self.l3 = Linear(dim, hidden, rngs=rngs), Linear(hidden, hidden, rngs=rngs), \
            Linear(hidden, 1, rngs=rngs)

    def __call__(self, xz, *, train=False, key=None):
        return self.l3(jax.nn.relu(self.l2(jax.nn.relu(self.l1(xz)))))[:, 0]


def mlp_critic(x_shape, z_shape, *, hidden: int = 128) -> Pure:
    """An unbounded T(x, z) = MLP([x; z]) (two ReLU layers of `hidden` units); input `(x, z)`."""
    dim = math.prod(x_shape) + math.prod(z_shape)
    net = pure(lambda rngs: _MLPCritic(dim, hidden, rngs=rngs))

    def apply(variables, xz, **kw):
        x, z = xz
        return net.apply(variables, jnp.concatenate([x.reshape(len(x), -1), z.reshape(len(z), -1)], 1), **kw)

    return Pure(net.init, apply)


class _ConvCritic(nnx.Module):
    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        widths = (channels, 64, 32, 16, 4)
        self.convs = nnx.List([Conv2d(a, b, 3, padding=1, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])

    def __call__(self, h, *, train=False, key=None):
        for i, conv in enumerate(self.convs):
            h = conv(h)
            h = jax.nn.sigmoid(h) if i == len(self.convs) - 1 else jnp.tanh(h)
        return jnp.mean(h, axis=(1, 2, 3))


def siftfunnel_critic(x_shape, z_shape) -> Pure:
    """The reference's T(x, z) for images `x_shape = (H, W, C)` and features `z_shape = (h, w, c)`,
    h <= H, w <= W: z zero-padded right/bottom to H×W, concatenated with x; output in (0, 1)."""
    if len(x_shape) != 3 or len(z_shape) != 3 or z_shape[0] > x_shape[0] or z_shape[1] > x_shape[1]:
        raise ValueError(f"expected image shape (H, W, C) and feature shape (h, w, c) with h <= H, w <= W, "
                         f"got {tuple(x_shape)} and {tuple(z_shape)}")
    net = pure(lambda rngs: _ConvCritic(x_shape[2] + z_shape[2], rngs=rngs))
    pad = ((0, 0), (0, x_shape[0] - z_shape[0]), (0, x_shape[1] - z_shape[1]), (0, 0))

    def apply(variables, xz, **kw):
        x, z = xz
        return net.apply(variables, jnp.concatenate([x, jnp.pad(z, pad)], axis=-1), **kw)

    return Pure(net.init, apply)


def donsker_varadhan(t_joint: jax.Array, t_marginal: jax.Array) -> jax.Array:
    """mean T(joint) − log mean exp T(marginal)."""
    return jnp.mean(t_joint) - (jax.nn.logsumexp(t_marginal) - jnp.log(t_marginal.shape[0]))


@dataclasses.dataclass(frozen=True, kw_only=True)
class MINEConfig:
    """Estimator settings; defaults are the reference's optimiser (AdamW lr 0.01, betas (0.8, 0.99)).

    Attributes:
        steps: training steps.
        batch_size: pairs per step (joint and shuffled).
        learning_rate, b1, b2, weight_decay: AdamW.
        eval_every: evaluate the bound on the evaluation pairs every this many steps.
        select_best: report each seed's best evaluation (the reference) instead of the last.
        seeds: estimator seeds trained as one vmapped program.
    """

    steps: int = 1000
    batch_size: int = 128
    learning_rate: float = 0.01
    b1: float = 0.8
    b2: float = 0.99
    weight_decay: float = 1e-4
    eval_every: int = 100
    select_best: bool = True
    seeds: int = 3

    def validate(self) -> None:
        if min(self.steps, self.batch_size, self.eval_every, self.seeds) < 1 or self.batch_size < 2:
            raise ValueError(f"expected steps, eval_every, seeds >= 1 and batch_size >= 2, got {self}")


class MIEstimate(NamedTuple):
    """The MINE estimate: `value` (mean over seeds, nats), `spread` (std over seeds), `per_seed`."""

    value: float
    spread: float
    per_seed: np.ndarray


def _bound(critic: Pure, variables, x, z, key, chunk: int):
    """The DV bound over all pairs of (x, z), T evaluated in chunks, one shared permutation."""
    perm = jax.random.permutation(key, x.shape[0])
    joint, marginal = [], []
    for s in range(0, x.shape[0], chunk):
        joint.append(critic.apply(variables, (x[s:s + chunk], z[s:s + chunk]))[0])
        marginal.append(critic.apply(variables, (x[s:s + chunk], z[perm[s:s + chunk]]))[0])
    return donsker_varadhan(jnp.concatenate(joint), jnp.concatenate(marginal))


def estimate_mutual_information(x, z, *, key: jax.Array, eval_x=None, eval_z=None, critic: Pure | str = "siftfunnel",
                                config: MINEConfig = MINEConfig()) -> MIEstimate:
    """MINE's estimate of I(x; z) in nats, trained on (x, z) and evaluated on (eval_x, eval_z).

    Args:
        x: `[n, ...]` first variable (images `[n, H, W, C]` for the SiftFunnel critic).
        z: `[n, ...]` second variable (features `[n, h, w, c]`), paired with x by index.
        key: PRNG key (critic initialisation per seed, batches, permutations).
        eval_x, eval_z: evaluation pairs (the auxiliary data); None: x and z.
        critic: "siftfunnel" (the reference's bounded T), "mlp" (unbounded) or a `Pure` taking `(x, z)`
            and returning `[batch]` values.
        config: `MINEConfig`.

    Returns:
        `MIEstimate(value, spread, per_seed)`.

    Raises:
        ValueError: on unpaired inputs, fewer pairs than a batch, or a bad config.

    Example:
        >>> est = estimate_mutual_information(images, features, key=jax.random.key(0), critic="siftfunnel")
        >>> est.value, est.spread
    """
    config.validate()
    x, z = jnp.asarray(x, jnp.float32), jnp.asarray(z, jnp.float32)
    eval_x = x if eval_x is None else jnp.asarray(eval_x, jnp.float32)
    eval_z = z if eval_z is None else jnp.asarray(eval_z, jnp.float32)
    if x.shape[0] != z.shape[0] or eval_x.shape[0] != eval_z.shape[0] or x.shape[0] < config.batch_size:
        raise ValueError(f"expected paired x and z with at least batch_size={config.batch_size} pairs, got "
                         f"{x.shape}, {z.shape} (evaluation {eval_x.shape}, {eval_z.shape})")
    if isinstance(critic, str):
        if critic not in ("siftfunnel", "mlp"):
            raise ValueError(f"expected critic 'siftfunnel', 'mlp' or a Pure, got {critic!r}")
        critic = (siftfunnel_critic if critic == "siftfunnel" else mlp_critic)(x.shape[1:], z.shape[1:])
    optimizer = optax.adamw(config.learning_rate, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay)
    init_key, train_key, eval_key = jax.random.split(key, 3)
    n = x.shape[0]

    def init(seed_key):
        variables = critic.init(seed_key)
        return variables, optimizer.init(variables["params"])

    def step(carry, step_key):
        variables, opt_state = carry
        index_key, perm_key = jax.random.split(step_key)
        idx = jax.random.choice(index_key, n, (config.batch_size,), replace=False)
        xb, zb = x[idx], z[idx]
        perm = jax.random.permutation(perm_key, config.batch_size)

        def negative_bound(params):
            v = {**variables, "params": params}
            return -donsker_varadhan(critic.apply(v, (xb, zb))[0], critic.apply(v, (xb, zb[perm]))[0])

        loss, grads = jax.value_and_grad(negative_bound)(variables["params"])
        updates, opt_state = optimizer.update(grads, opt_state, variables["params"])
        return ({**variables, "params": optax.apply_updates(variables["params"], updates)}, opt_state), loss

    @jax.jit
    def train_chunk(carry, keys):
        return jax.vmap(lambda c, k: jax.lax.scan(step, c, k))(carry, keys)[0]

    @jax.jit
    def evaluate(carry, k):
        return jax.vmap(lambda v: _bound(critic, v, eval_x, eval_z, k, 4 * config.batch_size))(carry[0])

    carry = jax.vmap(init)(jax.random.split(init_key, config.seeds))
    history, done = [], 0
    while done < config.steps:
        count = min(config.eval_every, config.steps - done)
        keys = jax.vmap(lambda s: jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(train_key, s), i))(
            jnp.arange(done, done + count)))(jnp.arange(config.seeds))
        carry = train_chunk(carry, keys)
        done += count
        history.append(np.asarray(evaluate(carry, jax.random.fold_in(eval_key, done))))
    history = np.stack(history)  # [evaluations, seeds]
    per_seed = history.max(axis=0) if config.select_best else history[-1]
    return MIEstimate(float(per_seed.mean()), float(per_seed.std()), per_seed)
