"""KEDMI: knowledge-enriched distributional model inversion (Chen, Kahla, Jia, Qi; ICCV 2021).

Training-data inversion of a released classifier T (`ReleasedClassifier`) in two parts.

**An inversion-specific GAN** on public images: the discriminator D has K logits (T's classes), the
(K+1)-th "fake" class being implicit, and learns T's soft labels on the public data (`k+1_gan.py`):

    L_D = −Σ_k softmax(T(x))_k·log softmax(D(x))_k                        (soft labels, mean over x)
          + w_u·½·( E softplus(lse D(x_u)) − E lse D(x_u) + E softplus(lse D(G(z))) ),

lse the log-sum-exp over the K logits, x, x_u independent public batches, w_u the unlabelled weight
(10, spec: BiDO's DMI configuration); every `n_critic`-th step the generator matches D's features of
a third public batch, with an entropy term on D's classes of its samples,

    L_G = mean_j |E φ(G(z))_j − E φ(x_u')_j| + 10⁻⁴·H(softmax D(G(z))),   H summed over the batch.

**A learned latent distribution per target** (`dist_inversion`): for each target class c, a Gaussian
N(μ_c, exp(log σ²_c)) (μ = 0, log σ² = 1 initially) trained with Adam (lr 2e-2) through the
reparameterisation z = μ + σ·ε on

    L = E softplus(lse D(G(z))) − E lse D(G(z)) + λ·CE(T(G(z)), c),      λ = 100,

(the mean over the batch of one code per target, as the reference), then sampled 5 times per target.
All targets run in one compiled program (`lax.scan` over the iterations).

Example:
    >>> prior = train_kedmi_prior(mlp_generator(...).as_pure(), mlp_critic(..., outputs=5), classifier,
    ...                           public_images, key=k1)
    >>> result = kedmi_attack(classifier, prior, jnp.arange(5), key=k2)      # images [5, 5, ...]
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mijax.attacks.gmi import InversionResult, TrainedPrior, _check_public, check_targets
from mijax.attacks.released import ReleasedClassifier
from mijax.nn import Pure, Sequential, Variables
from mijax.steps import descend
from mijax.train import fit_loop


@dataclasses.dataclass(frozen=True, kw_only=True)
class KedmiPriorConfig:
    """KEDMI's GAN training (BiDO's DMI configuration for MNIST / CIFAR-10).

    Attributes:
        latent_dim: dimension of z (100).
        epochs: passes over the public images (100).
        batch_size: images per step (64).
        learning_rate: Adam step size of D and G (2e-4).
        b1, b2: Adam's decay rates (0.5, 0.999).
        n_critic: discriminator steps per generator step (5).
        unlabelled_weight: w_u on the unlabelled/fake term (10).
        entropy_weight: weight of the generator's entropy term (1e-4).
        train_generator: update the generator (the reference); False trains only the discriminator
            against a fixed generator (e.g. GMI's, passed as `generator_variables`).
    """

    latent_dim: int = 100
    epochs: int = 100
    batch_size: int = 64
    learning_rate: float = 2e-4
    b1: float = 0.5
    b2: float = 0.999
    n_critic: int = 5
    unlabelled_weight: float = 10.0
    entropy_weight: float = 1e-4
    train_generator: bool = True

    def validate(self) -> None:
        if min(self.latent_dim, self.epochs, self.batch_size, self.n_critic) < 1:
            raise ValueError(f"expected latent_dim, epochs, batch_size and n_critic >= 1, got {self.latent_dim}, "
                             f"{self.epochs}, {self.batch_size}, {self.n_critic}")
        if not (self.learning_rate > 0 and 0 <= self.b1 < 1 and 0 <= self.b2 < 1 and self.unlabelled_weight >= 0
                and self.entropy_weight >= 0):
            raise ValueError(f"expected learning_rate > 0, b1, b2 in [0, 1) and non-negative weights, got "
                             f"{self.learning_rate}, {self.b1}, {self.b2}, {self.unlabelled_weight}, "
                             f"{self.entropy_weight}")


class KedmiState(NamedTuple):
    step: jax.Array
    generator: Variables
    discriminator: Variables
    generator_opt_state: optax.OptState
    discriminator_opt_state: optax.OptState


def soft_cross_entropy(logits: jax.Array, target_logits: jax.Array) -> jax.Array:
    """`−Σ_k softmax(target_logits)_k·log softmax(logits)_k` per example (the reference's `softXEnt`)."""
    return -jnp.sum(jax.nn.softmax(target_logits, -1) * jax.nn.log_softmax(logits, -1), -1)


def unlabelled_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """½·(E softplus(lse D(x)) − E lse D(x) + E softplus(lse D(G(z)))): real is any of the K classes,
    fake the implicit K+1-th (Salimans et al. 2016's semi-supervised GAN loss, KEDMI's `loss_unlab`)."""
    real, fake = jax.nn.logsumexp(logits_real, -1), jax.nn.logsumexp(logits_fake, -1)
    return 0.5 * (jnp.mean(jax.nn.softplus(real)) - jnp.mean(real) + jnp.mean(jax.nn.softplus(fake)))


def kedmi_prior_loss(logits_fake: jax.Array) -> jax.Array:
    """The recovery's realism term: E softplus(lse D(G(z))) − E lse D(G(z)) (= −E log P(real))."""
    lse = jax.nn.logsumexp(logits_fake, -1)
    return jnp.mean(jax.nn.softplus(lse)) - jnp.mean(lse)


def _features(discriminator: Sequential, variables, x):
    _, _, taps = discriminator.apply_tapped(variables, x, taps=("features",))
    return taps["features"].reshape(x.shape[0], -1)


def train_kedmi_prior(generator: Pure, discriminator: Sequential, classifier: ReleasedClassifier, public_images, *,
                      config: KedmiPriorConfig = KedmiPriorConfig(), key: jax.Array,
                      generator_variables=None, workdir: str | pathlib.Path | None = None,
                      progress: bool = True) -> TrainedPrior:
    """Trains KEDMI's inversion-specific GAN on public images with the target's soft labels.

    Args:
        generator: `[batch, latent_dim] -> images` in [0, 1] (`mlp_generator`, `decoder_for`).
        discriminator: a `Sequential` with a layer named `"features"` and K = `classifier.num_classes`
            output logits (`mlp_critic(outputs=K)`, `kedmi_discriminator`).
        classifier: the released target (its soft labels on the public images).
        public_images: `[num, height, width, channels]` in [0, 1].
        config: the settings.
        key: PRNG key.
        generator_variables: start the generator from these (default: `generator.init`).
        workdir: checkpoint folder (None: none); a rerun resumes.
        progress: show a progress bar.

    Returns:
        The `TrainedPrior` (its critic the discriminator).

    Raises:
        TypeError: if `classifier` is not a `ReleasedClassifier` or `discriminator` not a `Sequential`.
        ValueError: on images of the wrong shape or range, a discriminator without `"features"` or with
            a number of logits other than the classifier's classes, or invalid settings.
    """
    config.validate()
    if not isinstance(classifier, ReleasedClassifier):
        raise TypeError(f"expected a ReleasedClassifier, got {type(classifier).__name__}")
    if not isinstance(discriminator, Sequential) or "features" not in discriminator.names:
        raise TypeError("expected the discriminator as a mijax.nn.Sequential with a layer named 'features'")
    images = _check_public(public_images, generator, config.latent_dim, config.batch_size)
    logits_shape = jax.eval_shape(lambda v, x: discriminator.apply(v, x)[0],
                                  jax.eval_shape(discriminator.init, jax.random.key(0)),
                                  jax.ShapeDtypeStruct((2, *images.shape[1:]), jnp.float32)).shape
    if logits_shape != (2, classifier.num_classes):
        raise ValueError(f"expected the discriminator to give {classifier.num_classes} logits per image "
                         f"(the classifier's classes), got shape {logits_shape} for a batch of 2")
    adam = optax.adam(config.learning_rate, b1=config.b1, b2=config.b2)
    generator_key, discriminator_key, loop_key = jax.random.split(key, 3)

    def init(start):
        g = generator.init(generator_key) if start is None else start
        d = discriminator.init(discriminator_key)
        return KedmiState(jnp.zeros((), jnp.int32), g, d, adam.init(g["params"]), adam.init(d["params"]))

    def step(state: KedmiState, batch, key, public, classifier):
        keys = jax.random.split(key, 5)
        size = batch.shape[0]
        unlabelled = public[jax.random.randint(keys[0], (size,), 0, public.shape[0])]
        unlabelled2 = public[jax.random.randint(keys[1], (size,), 0, public.shape[0])]
        soft = jax.lax.stop_gradient(classifier.logits(batch))
        fake = jax.lax.stop_gradient(generator.apply(state.generator, jax.random.normal(
            keys[2], (size, config.latent_dim)))[0])

        def discriminator_loss(params):
            d = lambda x: discriminator.apply({**state.discriminator, "params": params}, x)[0]
            labelled = jnp.mean(soft_cross_entropy(d(batch), soft))
            unlabelled_term = unlabelled_loss(d(unlabelled), d(fake))
            return labelled + config.unlabelled_weight * unlabelled_term, (labelled, unlabelled_term)

        d_params, d_opt, d_loss, (labelled, unlabelled_term) = descend(
            discriminator_loss, adam, state.discriminator["params"], state.discriminator_opt_state)
        d_vars = {**state.discriminator, "params": d_params}

        def generator_step(_):
            def generator_loss(params):
                out, variables = generator.apply({**state.generator, "params": params},
                                                 jax.random.normal(keys[3], (size, config.latent_dim)),
                                                 train=True, key=keys[4])
                matching = jnp.mean(jnp.abs(jnp.mean(_features(discriminator, d_vars, out), 0)
                                            - jnp.mean(_features(discriminator, d_vars, unlabelled2), 0)))
                logits = discriminator.apply(d_vars, out)[0]
                entropy = -jnp.sum(jax.nn.softmax(logits, -1) * jax.nn.log_softmax(logits, -1))
                return matching + config.entropy_weight * entropy, variables

            params, opt_state, g_loss, variables = descend(generator_loss, adam, state.generator["params"],
                                                           state.generator_opt_state)
            return {**variables, "params": params}, opt_state, g_loss

        def skip(_):
            return state.generator, state.generator_opt_state, jnp.full((), jnp.nan, jnp.float32)

        update_generator = ((state.step + 1) % config.n_critic == 0) & config.train_generator
        g_vars, g_opt, g_loss = jax.lax.cond(update_generator, generator_step, skip, None)
        metrics = {"discriminator_loss": d_loss, "labelled": labelled, "unlabelled": unlabelled_term,
                   "generator_loss": g_loss}
        return KedmiState(state.step + 1, g_vars, d_vars, g_opt, d_opt), metrics

    start = None if generator_variables is None else jax.tree.map(lambda a: jnp.array(a, copy=True),
                                                                  generator_variables)
    state = fit_loop(step, jax.jit(init)(start), (images,), epochs=config.epochs, batch_size=config.batch_size,
                     key=loop_key, step_args=(jnp.asarray(images), classifier), workdir=workdir, progress=progress,
                     description="kedmi prior")
    return TrainedPrior(generator, discriminator, state.generator, state.discriminator, config.latent_dim)


@dataclasses.dataclass(frozen=True, kw_only=True)
class KedmiConfig:
    """KEDMI's distributional recovery (BiDO's DMI configuration).

    Attributes:
        iterations: Adam steps (5,000; the CelebA scripts 1,500).
        learning_rate: Adam step size on (μ, log σ²) (2e-2).
        identity_weight: λ (100).
        samples: codes drawn per target from the learned distribution at the end (5).
    """

    iterations: int = 5000
    learning_rate: float = 2e-2
    identity_weight: float = 100.0
    samples: int = 5

    def validate(self) -> None:
        if self.iterations < 1 or self.samples < 1:
            raise ValueError(f"expected iterations and samples >= 1, got {self.iterations}, {self.samples}")
        if not (self.learning_rate > 0 and self.identity_weight >= 0):
            raise ValueError(f"expected learning_rate > 0 and identity_weight >= 0, got {self.learning_rate}, "
                             f"{self.identity_weight}")


@functools.partial(jax.jit, static_argnames=("config",))
def _kedmi_program(classifier, prior, targets, key, config: KedmiConfig):
    count, dim = targets.shape[0], prior.latent_dim
    adam = optax.adam(config.learning_rate)
    params = {"mu": jnp.zeros((count, dim)), "log_var": jnp.ones((count, dim))}

    def sample(params, key, n):
        eps = jax.random.normal(key, (n, count, dim))
        return params["mu"] + jnp.exp(0.5 * params["log_var"]) * eps      # [n, targets, latent]

    def loss_fn(params, key):
        x = prior.generate(sample(params, key, 1)[0])
        identity = optax.softmax_cross_entropy_with_integer_labels(classifier.logits(x), targets)
        return kedmi_prior_loss(prior.critique(x)) + config.identity_weight * jnp.mean(identity), None

    def body(carry, t):
        params, opt_state = carry
        params, opt_state, _, _ = descend(loss_fn, adam, params, opt_state, jax.random.fold_in(key, t))
        return (params, opt_state), None

    (params, _), _ = jax.lax.scan(body, (params, adam.init(params)), jnp.arange(config.iterations))
    z = sample(params, jax.random.fold_in(key, config.iterations), config.samples)    # [samples, targets, d]
    flat = z.reshape(-1, dim)
    x = prior.generate(flat)
    lse = jax.nn.logsumexp(prior.critique(x), -1)
    prior_loss = (jax.nn.softplus(lse) - lse).reshape(config.samples, count)
    identity = optax.softmax_cross_entropy_with_integer_labels(
        classifier.logits(x), jnp.tile(targets, config.samples)).reshape(config.samples, count)
    swap = lambda a: jnp.swapaxes(a, 0, 1)
    images = x.reshape(config.samples, count, *x.shape[1:])
    total = prior_loss + config.identity_weight * identity
    return InversionResult(swap(images), swap(z), swap(identity), swap(prior_loss), jnp.argmin(total, axis=0),
                           targets), params


def kedmi_attack(classifier: ReleasedClassifier, prior: TrainedPrior, targets, *,
                 config: KedmiConfig = KedmiConfig(), key: jax.Array) -> InversionResult:
    """KEDMI's distributional inversion of `classifier` for each class in `targets` (module docstring).

    Args:
        classifier: the released classifier (white-box).
        prior: KEDMI's GAN (`train_kedmi_prior`; its critic gives K logits).
        targets: `[targets]` classes to reconstruct.
        config: the settings.
        key: PRNG key (the reparameterisation noise and the final samples).

    Returns:
        An `InversionResult` with `[targets, samples, ...]` arrays (samples from the learned
        distributions; `prior_loss` is −log P(real) per sample).
    """
    config.validate()
    targets = check_targets(targets, classifier)
    if not isinstance(prior, TrainedPrior):
        raise TypeError(f"expected a TrainedPrior (train_kedmi_prior), got {type(prior).__name__}")
    result, _ = _kedmi_program(classifier, prior, targets, key, config)
    return result
