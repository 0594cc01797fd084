"""GMI: the generative model-inversion attack (Zhang, Jia, Pei, Wang, Li, Song; CVPR 2020).

Training-data inversion of a released classifier T (`ReleasedClassifier`, white-box): a WGAN-GP prior
(generator G, critic D) is trained on public images (other classes, no labels), then for each target
class c latent codes are optimised to

    min_z  L(z) = −D(G(z)) + λ·CE(T(G(z)), c),        λ = 100,

with the reference's Nesterov momentum (lr 1e-2 (spec; the CelebA script 2e-2), momentum 0.9,
1,500 iterations), z ~ N(0, I) initially and clamped to [−1, 1] after every step, for 5 restarts
(`GMI-attack/attack.py`):

    v' = μ·v − lr·∇L(z);   z ← clamp(z + (−μ·v + (1 + μ)·v'), −1, 1).

Like the reference, whose batch holds one image per target, the loss is the mean over targets, so
each code's step is its own gradient over the number of targets. Targets and restarts run as one
compiled program (`lax.scan` over the iterations of a `[restarts, targets, latent]` array; `vmap` over
restarts). The prior is WGAN-GP on the public data (`mijax.attacks.gan.make_gan_step` with no pixel
loss: Adam β (0.5, 0.999), n_critic 5, λ_GP 10; BiDO's MNIST setting lr 4e-3, batch 64, 300 epochs).

Example:
    >>> prior = train_gmi_prior(decoder_for((100,), (28, 28, 1)), dgwgan32(image_shape=(28, 28, 1)),
    ...                         public_images, config=PriorConfig(epochs=300), key=k1)
    >>> result = gmi_attack(ReleasedClassifier.from_model(model, variables), prior, jnp.arange(5), key=k2)
    >>> result.images          # [targets, restarts, 28, 28, 1]
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mijax import checks
from mijax.attacks.gan import GanConfig, GanState, make_gan_step
from mijax.attacks.released import ReleasedClassifier
from mijax.nn import Pure
from mijax.train import fit_loop


@dataclasses.dataclass(frozen=True, kw_only=True)
class PriorConfig:
    """WGAN-GP prior training on public data (GMI; BiDO's MNIST configuration).

    Attributes:
        latent_dim: dimension of z (100).
        epochs: passes over the public images (300).
        batch_size: images per critic step (64).
        learning_rate: Adam step size of critic and generator (4e-3).
        b1, b2: Adam's decay rates (0.5, 0.999).
        n_critic: critic steps per generator step (5).
        gp_weight: gradient-penalty weight λ_GP (10).
    """

    latent_dim: int = 100
    epochs: int = 300
    batch_size: int = 64
    learning_rate: float = 4e-3
    b1: float = 0.5
    b2: float = 0.999
    n_critic: int = 5
    gp_weight: float = 10.0

    def validate(self) -> None:
        if min(self.latent_dim, self.epochs, self.batch_size, self.n_critic) < 1:
            raise ValueError(f"expected latent_dim, epochs, batch_size and n_critic >= 1, got {self.latent_dim}, "
                             f"{self.epochs}, {self.batch_size}, {self.n_critic}")
        if not (self.learning_rate > 0 and 0 <= self.b1 < 1 and 0 <= self.b2 < 1 and self.gp_weight >= 0):
            raise ValueError(f"expected learning_rate > 0, b1, b2 in [0, 1), gp_weight >= 0, got "
                             f"{self.learning_rate}, {self.b1}, {self.b2}, {self.gp_weight}")


@functools.partial(jax.tree_util.register_dataclass, data_fields=["generator_variables", "critic_variables"],
                   meta_fields=["generator", "critic", "latent_dim"])
@dataclasses.dataclass(frozen=True)
class TrainedPrior:
    """A trained GAN prior: a pytree (variables are leaves), so attacks take it as a program argument.

    Attributes:
        generator: `[batch, latent_dim] -> [batch, height, width, channels]` images in [0, 1].
        critic: the critic/discriminator; its output's meaning is the attack's (WGAN score for GMI,
            `[batch, K]` logits of the K+1-class discriminator for KEDMI).
        generator_variables, critic_variables: their trained variables.
        latent_dim: the dimension of z.
    """

    generator: Pure
    critic: Pure
    generator_variables: Any
    critic_variables: Any
    latent_dim: int

    def generate(self, z: jax.Array) -> jax.Array:
        """`G(z)` in eval mode."""
        return self.generator.apply(self.generator_variables, z)[0]

    def critique(self, x: jax.Array) -> jax.Array:
        """The critic's output on images `x`."""
        return self.critic.apply(self.critic_variables, x)[0]


def _check_public(images, generator: Pure, latent_dim: int, batch_size: int) -> np.ndarray:
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"expected public_images of shape [num, height, width, channels], got {images.shape}")
    checks.unit_interval("public_images", images)
    if not 0 < batch_size <= len(images):
        raise ValueError(f"expected batch_size in [1, {len(images)}] (the public images), got {batch_size}")
    out = jax.eval_shape(lambda v, z: generator.apply(v, z)[0], jax.eval_shape(generator.init, jax.random.key(0)),
                         jax.ShapeDtypeStruct((2, latent_dim), jnp.float32))
    if tuple(out.shape[1:]) != images.shape[1:]:
        raise ValueError(f"expected the generator to map [batch, {latent_dim}] to images {images.shape[1:]}, "
                         f"got {tuple(out.shape[1:])}")
    return images


def train_gmi_prior(generator: Pure, critic: Pure, public_images, *, config: PriorConfig = PriorConfig(),
                    key: jax.Array, workdir: str | pathlib.Path | None = None,
                    progress: bool = True) -> TrainedPrior:
    """Trains GMI's WGAN-GP prior on public images (no labels); checkpoints in `workdir`, resumes.

    Every step updates the critic on a batch of public images and G(z), z ~ N(0, I), with the
    gradient penalty; every `n_critic`-th step also the generator on fresh z (`make_gan_step`).

    Args:
        generator: e.g. `mijax.models.decoder_for((100,), image_shape)` (outputs in [0, 1]).
        critic: a critic without batch statistics mapping images to scores `[batch]` (`dgwgan32`).
        public_images: `[num, height, width, channels]` in [0, 1], classes disjoint from the private.
        config: the settings.
        key: PRNG key (initialisation, order, latents, penalties).
        workdir: checkpoint folder (None: none).
        progress: show a progress bar.

    Returns:
        The `TrainedPrior`.
    """
    config.validate()
    images = _check_public(public_images, generator, config.latent_dim, config.batch_size)
    gan = GanConfig(epochs=config.epochs, batch_size=config.batch_size, critic_learning_rate=config.learning_rate,
                    generator_learning_rate=config.learning_rate, b1=config.b1, b2=config.b2, t_max=2 ** 30,
                    n_critic=config.n_critic, gp_weight=config.gp_weight, mse_weight=0.0)
    update = make_gan_step(generator, critic, gan, len(images) // config.batch_size)  # constant lr (t_max huge)
    generator_key, critic_key, loop_key = jax.random.split(key, 3)
    adam = optax.scale_by_adam(b1=config.b1, b2=config.b2)

    def init():
        g, d = generator.init(generator_key), critic.init(critic_key)
        return GanState(jnp.zeros((), jnp.int32), g, d, adam.init(g["params"]), adam.init(d["params"]))

    def step(state, batch, key):
        critic_z, generator_z, step_key = jax.random.split(key, 3)
        shape = (batch.shape[0], config.latent_dim)
        return update(state, batch, jax.random.normal(critic_z, shape), jax.random.normal(generator_z, shape),
                      step_key)

    state = fit_loop(step, jax.jit(init)(), (images,), epochs=config.epochs, batch_size=config.batch_size,
                     key=loop_key, workdir=workdir, progress=progress, description="gmi prior")
    return TrainedPrior(generator, critic, state.generator, state.critic, config.latent_dim)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GmiConfig:
    """GMI's latent optimisation (`GMI-attack`, MNIST settings of the spec).

    Attributes:
        iterations: optimisation steps (1,500).
        learning_rate: Nesterov step size (1e-2).
        momentum: μ (0.9).
        identity_weight: λ on the classifier's cross-entropy (100).
        clip: z is clamped to [−clip, clip] (1).
        restarts: independent initialisations per target (5).
    """

    iterations: int = 1500
    learning_rate: float = 1e-2
    momentum: float = 0.9
    identity_weight: float = 100.0
    clip: float = 1.0
    restarts: int = 5

    def validate(self) -> None:
        if self.iterations < 1 or self.restarts < 1:
            raise ValueError(f"expected iterations and restarts >= 1, got {self.iterations}, {self.restarts}")
        if not (self.learning_rate > 0 and 0 <= self.momentum < 1 and self.identity_weight >= 0 and self.clip > 0):
            raise ValueError(f"expected learning_rate > 0, momentum in [0, 1), identity_weight >= 0, clip > 0, got "
                             f"{self.learning_rate}, {self.momentum}, {self.identity_weight}, {self.clip}")


class InversionResult(NamedTuple):
    """Reconstructions of training-data inversion, `[targets, restarts (or samples), ...]`.

    Attributes:
        images: `[targets, restarts, height, width, channels]` in [0, 1].
        latents: `[targets, restarts, latent_dim]` the final codes.
        identity_loss: `[targets, restarts]` CE(T(G(z)), c) at the end.
        prior_loss: `[targets, restarts]` the prior term at the end (−D(G(z)) for GMI).
        best: `[targets]` the restart of lowest total loss (the attacker's own choice; no evaluator).
        targets: `[targets]` the target classes.
    """

    images: jax.Array
    latents: jax.Array
    identity_loss: jax.Array
    prior_loss: jax.Array
    best: jax.Array
    targets: jax.Array

    def best_images(self) -> jax.Array:
        """`[targets, height, width, channels]`: each target's best restart."""
        return jnp.take_along_axis(self.images, self.best[:, None, None, None, None], axis=1)[:, 0]


def check_targets(targets, classifier: ReleasedClassifier) -> jax.Array:
    if not isinstance(classifier, ReleasedClassifier):
        raise TypeError(f"expected a ReleasedClassifier (the attacked model), got {type(classifier).__name__}")
    targets = np.asarray(targets)
    if targets.ndim != 1 or targets.size == 0:
        raise ValueError(f"expected targets as a non-empty vector of classes, got shape {targets.shape}")
    checks.class_labels("targets", targets, classifier.num_classes)
    return jnp.asarray(targets, jnp.int32)


def _gmi_losses(classifier, prior, targets, z):
    """Per-code `(prior_loss, identity_loss)` of `z` `[restarts, targets, latent]`, each `[restarts, targets]`."""
    restarts, count, dim = z.shape
    x = prior.generate(z.reshape(restarts * count, dim))
    prior_loss = -prior.critique(x)
    identity = optax.softmax_cross_entropy_with_integer_labels(classifier.logits(x), jnp.tile(targets, restarts))
    return prior_loss.reshape(restarts, count), identity.reshape(restarts, count)


@functools.partial(jax.jit, static_argnames=("config",))
def _gmi_program(classifier, prior, targets, key, config: GmiConfig):
    count = targets.shape[0]
    z = jax.random.normal(key, (config.restarts, count, prior.latent_dim))

    def objective(z_restart):  # one restart's batch of targets: the reference's mean over its batch
        p, i = _gmi_losses(classifier, prior, targets, z_restart[None])
        return jnp.mean(p + config.identity_weight * i)

    gradient = jax.vmap(jax.grad(objective))           # vmapped over restarts

    def body(carry, _):
        z, v = carry
        v_new = config.momentum * v - config.learning_rate * gradient(z)
        z = jnp.clip(z + (-config.momentum * v + (1 + config.momentum) * v_new), -config.clip, config.clip)
        return (z, v_new), None

    (z, _), _ = jax.lax.scan(body, (z, jnp.zeros_like(z)), None, length=config.iterations)
    prior_loss, identity = _gmi_losses(classifier, prior, targets, z)
    images = prior.generate(z.reshape(-1, prior.latent_dim))
    images = images.reshape(config.restarts, count, *images.shape[1:])
    swap = lambda a: jnp.swapaxes(a, 0, 1)
    total = prior_loss + config.identity_weight * identity
    return InversionResult(swap(images), swap(z), swap(identity), swap(prior_loss), jnp.argmin(total, axis=0),
                           targets)


def gmi_attack(classifier: ReleasedClassifier, prior: TrainedPrior, targets, *, config: GmiConfig = GmiConfig(),
               key: jax.Array) -> InversionResult:
    """GMI's inversion of `classifier` for each class in `targets` (module docstring).

    One compiled program runs every target and restart (`lax.scan` over iterations).

    Args:
        classifier: the released classifier (white-box), e.g. `ReleasedClassifier.from_model(...)`.
        prior: the WGAN-GP prior (`train_gmi_prior`); its critic maps images to scores `[batch]`.
        targets: `[targets]` the classes to reconstruct.
        config: the settings.
        key: PRNG key for the initial codes.

    Returns:
        An `InversionResult` with `[targets, restarts, ...]` arrays.

    Raises:
        TypeError: if `classifier` is not a `ReleasedClassifier` or `prior` not a `TrainedPrior`.
        ValueError: on targets outside the classifier's classes, or invalid settings.
    """
    config.validate()
    targets = check_targets(targets, classifier)
    if not isinstance(prior, TrainedPrior):
        raise TypeError(f"expected a TrainedPrior (train_gmi_prior), got {type(prior).__name__}")
    return _gmi_program(classifier, prior, targets, key, config)
