"""White-box regularised maximum-likelihood estimation (rMLE), He et al. ACSAC 2019 §4.1.

    x* = argmin_x  ‖f(x) − z̃‖² + λ_TV · TV(x) + λ_l2 · ‖x‖²

solved by gradient descent from a fixed start. Two documented variants (`he2019.md` §3):

- `RMLEConfig()` — the authors' code, which produced the published numbers: optimise in normalised
  space from 0 (the dataset mean colour), feature loss = mean squared error, TV = mean squared
  differences (`total_variation(variant="code")`), PyTorch AMSGrad with eps 1e-3;
- `RMLEConfig.paper()` — the paper's equation: optimise pixels from grey 0.5, squared L2 feature
  loss, TV_β with β = 1, Adam.

The iterations are one `lax.scan`; images in a batch are optimised independently (every term is per
image and the optimisers act element-wise), and the whole attack is vmappable over images, restarts,
λ_TV, learning rates and σ (different `z_observed`, or different edges).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mijax import checks
from mijax.attacks.knowledge import WhiteBox
from mijax.attacks.priors import total_variation
from mijax.optim import torch_amsgrad
from mijax.steps import descend


@struct.dataclass(frozen=True, kw_only=True)
class RMLEConfig:
    """Settings of the rMLE attack; numeric fields may be traced (swept under vmap).

    Attributes:
        num_steps: optimisation steps (static).
        learning_rate: optimiser step size.
        tv_weight: λ_TV.
        l2_weight: λ_l2 on the mean squared value of the optimised variable (code: 0 except fc2).
        eps: optimiser epsilon (1e-3 in the authors' code).
        tv: "code" or "paper" (see `total_variation`).
        feature_loss: "mean" (code: mean over feature elements) or "sum" (paper: squared L2 norm).
        space: "normalized" (start at 0 = the dataset mean) or "pixel" (start at grey 0.5).
        optimizer: "amsgrad_torch" (PyTorch's AMSGrad) or "adam".
        legacy_eps: AMSGrad with PyTorch < 1.3's eps rule (the authors ran 1.0; see
            `mijax.optim.torch_amsgrad`); False for the current rule.
    """

    num_steps: int = struct.field(pytree_node=False, default=500)
    learning_rate: float = 1e-2
    tv_weight: float = 0.0
    l2_weight: float = 0.0
    eps: float = 1e-3
    tv: str = struct.field(pytree_node=False, default="code")
    feature_loss: str = struct.field(pytree_node=False, default="mean")
    space: str = struct.field(pytree_node=False, default="normalized")
    optimizer: str = struct.field(pytree_node=False, default="amsgrad_torch")
    legacy_eps: bool = struct.field(pytree_node=False, default=True)

    @classmethod
    def paper(cls, **overrides) -> RMLEConfig:
        """The ACSAC paper's formulation (grey start, β = 1 TV, squared-norm feature loss, Adam)."""
        settings = dict(tv="paper", feature_loss="sum", space="pixel", optimizer="adam", eps=1e-8)
        return cls(**{**settings, **overrides})

    def validate(self) -> None:
        choices = {"tv": ("code", "paper"), "feature_loss": ("mean", "sum"),
                   "space": ("normalized", "pixel"), "optimizer": ("amsgrad_torch", "adam")}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"expected {name} in {valid}, got {getattr(self, name)!r}")
        if self.num_steps < 1:
            raise ValueError(f"expected num_steps >= 1, got {self.num_steps}")
        checks.check_scalar("learning_rate", self.learning_rate, open_low=True)
        checks.check_scalar("eps", self.eps, open_low=True)
        checks.check_scalar("tv_weight", self.tv_weight)
        checks.check_scalar("l2_weight", self.l2_weight)


def _optimizer(config: RMLEConfig) -> optax.GradientTransformation:
    if config.optimizer == "amsgrad_torch":
        return torch_amsgrad(config.learning_rate, eps=config.eps, legacy_eps=config.legacy_eps)
    return optax.adam(config.learning_rate, eps=config.eps)


def _space(knowledge: WhiteBox, config: RMLEConfig):
    """Maps between the optimised variable u and pixels."""
    if config.space == "normalized":
        return knowledge.normalization.denormalize, knowledge.normalization.normalize
    return (lambda u: u), (lambda x: x)


def rmle_objective(knowledge: WhiteBox, u: jax.Array, z_observed: jax.Array, *,
                   config: RMLEConfig) -> jax.Array:
    """The per-image rMLE objective at the optimised variable `u` (He et al. ACSAC 2019, Eq. 3).

    feature term (mean or sum of (f(x(u)) − z̃)²) + λ_TV·TV(u) + λ_l2·mean(u²), where x(u) is the
    de-normalised image in "normalized" space and u itself in "pixel" space.

    Returns:
        `[batch]` values.
    """
    to_pixels, _ = _space(knowledge, config)
    batch = u.shape[0]
    diff = (knowledge.edge(to_pixels(u)) - z_observed).reshape(batch, -1)
    feature = jnp.mean(diff ** 2, -1) if config.feature_loss == "mean" else jnp.sum(diff ** 2, -1)
    prior = config.tv_weight * total_variation(u, variant=config.tv)
    return feature + prior + config.l2_weight * jnp.mean(u.reshape(batch, -1) ** 2, -1)


def rmle(knowledge: WhiteBox, z_observed: jax.Array, *, config: RMLEConfig = RMLEConfig(),
         key: jax.Array | None = None, x_init: jax.Array | None = None,
         return_loss: bool = False):
    """Reconstructs images from observed features with the white-box rMLE attack.

    Args:
        knowledge: the edge function and its normalisation (`WhiteBox.from_model(model, variables)`).
        z_observed: `[batch, ...]` transmitted features z̃ (possibly noisy).
        config: the attack's settings.
        key: unused by the deterministic starts; kept for the common attack signature.
        x_init: optional start `[batch, height, width, channels]` in [0,1] instead of the config's.
        return_loss: also return the final per-image objective (to pick the best of restarts).

    Returns:
        `x_hat` `[batch, height, width, channels]` in [0,1] (and the `[batch]` final losses).

    Raises:
        ValueError: if `z_observed` is empty, not finite or does not match the edge's output shape,
            or on invalid settings (a learning rate or eps <= 0, negative weights).

    Example:
        >>> attacker = WhiteBox.from_model(model, variables)
        >>> x_hat = rmle(attacker, z_tilde, config=RMLEConfig(num_steps=500, learning_rate=1e-2))
    """
    del key
    config.validate()
    z_observed = jnp.asarray(z_observed)
    checks.nonempty("z_observed", z_observed.shape)
    checks.finite("z_observed", z_observed)
    batch = z_observed.shape[0]
    shape = (batch, *knowledge.input_shape)
    expected = jax.eval_shape(knowledge.edge, jax.ShapeDtypeStruct(shape, jnp.float32))
    if expected.shape != z_observed.shape:
        raise ValueError(f"expected z_observed of shape {expected.shape} (the edge's output for "
                         f"{batch} images), got {z_observed.shape}")
    to_pixels, from_pixels = _space(knowledge, config)
    if x_init is None:
        u0 = jnp.zeros(shape) if config.space == "normalized" else jnp.full(shape, 0.5)
    else:
        u0 = from_pixels(jnp.asarray(x_init))
    objective = lambda u: rmle_objective(knowledge, u, z_observed, config=config)

    optimizer = _optimizer(config)

    def step(carry, _):
        u, opt_state, _, _ = descend(lambda u: (jnp.sum(objective(u)), None), optimizer, *carry)
        return (u, opt_state), None

    (u, _), _ = jax.lax.scan(step, (u0, optimizer.init(u0)), None, length=config.num_steps)
    x_hat = jnp.clip(to_pixels(u), 0.0, 1.0)
    return (x_hat, objective(u)) if return_loss else x_hat
