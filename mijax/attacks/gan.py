"""CEM's GAN fine-tuning of the decoder attack: GMI-style WGAN-GP (Xia et al. 2025; Zhang et al. 2020).

The generator G is the decoder of a trained decoder attack (`train_decoder_attack`), fed the
transmitted features z̃ = f(x) + σε; a critic D (`mijax.models.dgwgan32`) separates real auxiliary
images from reconstructions. Every step updates the critic (`cem.md` §11, `train_gan.py`),

    L_D = −(E D(x) − E D(G(z̃))) + λ_GP·E (‖∇D(x̂)‖₂ − 1)²,   x̂ = x + α(G(z̃) − x), α ~ U(0, 1) per image,

with G in eval mode (BatchNorm running statistics), and every `n_critic`-th step (steps n_critic,
2·n_critic, ...) then updates the generator, in train mode, on a fresh query of the same images,

    L_G = −E D(G(z̃')) + w_MSE · MSE(G(z̃'), x),

against the critic just updated. Adam β = (0.5, 0.999), D lr 5e-3, G lr 5e-4, both annealed per epoch
by cosine with T_max 300 (η_min 0), batch 128, 150 epochs (`GMI/config/<dataset>.json`).

The step is one jitted pure function; the generator update sits under `lax.cond` on the shared step
counter, so vmapping over stacked models (`sweep=True`) keeps the branch (the counter is not batched).

Example:
    >>> trained = train_decoder_attack(decoder, oracle, aux, key=k1)
    >>> critic = mijax.models.dgwgan32(image_shape=model.input_shape)
    >>> tuned = gan_finetune(trained, critic, oracle, aux, key=k2)
    >>> x_hat = decoder_attack(tuned, z_tilde)
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mijax.attacks.knowledge import BlackBox
from mijax.attacks.learned_inversion import TrainedDecoder
from mijax.attacks.noise_aware_decoder import _stack, cosine_per_epoch, prepare_queries
from mijax.nn import Pure, Variables
from mijax.stacks import vmap_models
from mijax.steps import descend
from mijax.train import fit_loop


@dataclasses.dataclass(frozen=True, kw_only=True)
class GanConfig:
    """WGAN-GP fine-tuning settings; defaults are CEM's code (`train_gan.py`, `GMI/config/cifar10.json`).

    Attributes:
        epochs: passes over the auxiliary images (150 for CIFAR and FaceScrub, 80 for TinyImageNet).
        batch_size: images per step (128).
        critic_learning_rate: the critic's Adam step size (5e-3).
        generator_learning_rate: the generator's (5e-4, a tenth of the critic's).
        b1, b2: Adam's moment decay rates (0.5, 0.999).
        t_max: cosine annealing period in epochs (300; longer than the run, as in the reference).
        min_learning_rate: η_min of the annealing (0).
        n_critic: critic steps per generator step (10).
        gp_weight: λ_GP (10).
        mse_weight: w_MSE of the generator's pixel loss (1500).
    """

    epochs: int = 150
    batch_size: int = 128
    critic_learning_rate: float = 5e-3
    generator_learning_rate: float = 5e-4
    b1: float = 0.5
    b2: float = 0.999
    t_max: int = 300
    min_learning_rate: float = 0.0
    n_critic: int = 10
    gp_weight: float = 10.0
    mse_weight: float = 1500.0

    def validate(self) -> None:
        if min(self.epochs, self.batch_size, self.t_max, self.n_critic) < 1:
            raise ValueError(f"expected epochs, batch_size, t_max and n_critic >= 1, got {self.epochs}, "
                             f"{self.batch_size}, {self.t_max}, {self.n_critic}")
        if not (self.critic_learning_rate > 0 and self.generator_learning_rate > 0 and self.min_learning_rate >= 0):
            raise ValueError(f"expected positive learning rates and min_learning_rate >= 0, got "
                             f"{self.critic_learning_rate}, {self.generator_learning_rate}, {self.min_learning_rate}")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1 and self.gp_weight >= 0 and self.mse_weight >= 0):
            raise ValueError(f"expected b1, b2 in [0, 1) and non-negative weights, got b1={self.b1}, "
                             f"b2={self.b2}, gp_weight={self.gp_weight}, mse_weight={self.mse_weight}")


class GanState(NamedTuple):
    """The fine-tuning state; in a sweep every field but `step` has a leading model axis."""

    step: jax.Array
    generator: Variables
    critic: Variables
    generator_opt_state: optax.OptState
    critic_opt_state: optax.OptState


def gradient_penalty(critic_fn: Callable[[jax.Array], jax.Array], real: jax.typing.ArrayLike,
                     fake: jax.typing.ArrayLike, key: jax.Array) -> jax.Array:
    """WGAN-GP's penalty per example (Gulrajani et al. 2017, Eq. 3): `(‖∇ₓ D(x̂_i)‖₂ − 1)²`.

    `x̂_i = real_i + α_i·(fake_i − real_i)` with one `α_i ~ U(0, 1)` per example (GMI's
    `gradient_penalty`; the reference averages these values).

    The gradient is taken of `Σ_i D(x̂)_i`, which equals the per-example gradients when the critic
    treats examples independently (no batch statistics: instance/layer norm, not train-mode BatchNorm).
    The norm has a safe gradient at 0 (double backpropagation stays finite).

    Args:
        critic_fn: `critic_fn(images [batch, ...]) -> scores [batch]`, differentiable.
        real: `[batch, height, width, channels]` real images.
        fake: the same shape, generated images (treated as constants).
        key: PRNG key for α.

    Returns:
        `[batch]` penalty values.

    Raises:
        ValueError: if `real` and `fake` differ in shape or have no batch axis.
    """
    real, fake = jax.lax.stop_gradient(jnp.asarray(real)), jax.lax.stop_gradient(jnp.asarray(fake))
    if real.shape != fake.shape or real.ndim < 2:
        raise ValueError(f"expected real and fake of the same shape [batch, ...], got {real.shape} and {fake.shape}")
    alpha = jax.random.uniform(key, (real.shape[0],) + (1,) * (real.ndim - 1), real.dtype)
    interpolates = real + alpha * (fake - real)
    grads = jax.grad(lambda x: jnp.sum(critic_fn(x)))(interpolates)
    norms = optax.safe_norm(grads.reshape(grads.shape[0], -1), 0.0, axis=-1)
    return jnp.square(norms - 1.0)


def _adam_direction(config: GanConfig) -> optax.GradientTransformation:
    # the step size comes from the global step (epoch), not from the optimiser's own update count:
    # the generator is updated every n_critic steps but annealed per epoch like the critic
    return optax.scale_by_adam(b1=config.b1, b2=config.b2)


def make_gan_step(generator: Pure, critic: Pure, config: GanConfig, steps_per_epoch: int) -> Callable:
    """`update(state, images, z_critic, z_generator, key) -> (state, metrics)`: one critic step, and
    a generator step when `(state.step + 1) % n_critic == 0`.

    Pure. For stacked models vmap it with
    `in_axes=(GanState(None, 0, 0, 0, 0), None, 0, 0, None), out_axes=(GanState(None, 0, 0, 0, 0), 0)`
    (`gan_finetune(sweep=True)` does).

    Args:
        generator: the decoder `[batch, *feature] -> [batch, *image]` (with BatchNorm).
        critic: `[batch, *image] -> [batch]` scores without batch statistics (`dgwgan32`).
        config: the settings.
        steps_per_epoch: for the per-epoch annealing.

    Returns:
        The update; `z_critic` and `z_generator` are two independent queries of `images`.
    """
    adam = _adam_direction(config)
    critic_lr = cosine_per_epoch(config.critic_learning_rate, t_max=config.t_max,
                                 min_learning_rate=config.min_learning_rate, steps_per_epoch=steps_per_epoch)
    generator_lr = cosine_per_epoch(config.generator_learning_rate, t_max=config.t_max,
                                    min_learning_rate=config.min_learning_rate, steps_per_epoch=steps_per_epoch)

    def annealed_adam(lr):  # the reference's Adam step, −lr(t)·direction, as an optimiser for `descend`
        def update(grads, opt_state, params=None):
            direction, opt_state = adam.update(grads, opt_state, params)
            return jax.tree.map(lambda d: -lr * d, direction), opt_state
        return optax.GradientTransformation(adam.init, update)

    def update(state: GanState, images, z_critic, z_generator, key):
        gp_key, generator_key = jax.random.split(key)
        fake = jax.lax.stop_gradient(generator.apply(state.generator, z_critic)[0])  # G.eval()

        def critic_loss(params):
            score = lambda x: critic.apply({**state.critic, "params": params}, x)[0]
            wasserstein = jnp.mean(score(images)) - jnp.mean(score(fake))
            gp = jnp.mean(gradient_penalty(score, images, fake, gp_key))
            return -wasserstein + config.gp_weight * gp, (wasserstein, gp)

        critic_params, critic_opt, d_loss, (wasserstein, gp) = descend(
            critic_loss, annealed_adam(critic_lr(state.step)), state.critic["params"], state.critic_opt_state)
        critic_vars = {**state.critic, "params": critic_params}

        def generator_step(_):
            def generator_loss(params):
                out, variables = generator.apply({**state.generator, "params": params}, z_generator,
                                                 train=True, key=generator_key)
                adversarial = -jnp.mean(critic.apply(critic_vars, out)[0])
                mse = jnp.mean(jnp.square(out - images))
                return adversarial + config.mse_weight * mse, (variables, adversarial, mse)

            params, opt_state, g_loss, (variables, adversarial, mse) = descend(
                generator_loss, annealed_adam(generator_lr(state.step)), state.generator["params"],
                state.generator_opt_state)
            return {**variables, "params": params}, opt_state, g_loss, mse

        def skip(_):
            nan = jnp.full((), jnp.nan, jnp.float32)
            return state.generator, state.generator_opt_state, nan, nan

        generator_vars, generator_opt, g_loss, g_mse = jax.lax.cond(
            (state.step + 1) % config.n_critic == 0, generator_step, skip, None)
        metrics = {"critic_loss": d_loss, "wasserstein": wasserstein, "gp": gp,
                   "mse": jnp.mean(jnp.square(fake - images)), "generator_loss": g_loss, "generator_mse": g_mse}
        return GanState(state.step + 1, generator_vars, critic_vars, generator_opt, critic_opt), metrics

    return update


def gan_finetune(trained: TrainedDecoder, critic: Pure, oracle: BlackBox, aux_images, *,
                 config: GanConfig = GanConfig(), key: jax.Array, workdir: str | pathlib.Path | None = None,
                 progress: bool = True, sweep: bool = False, mesh=None) -> TrainedDecoder:
    """Fine-tunes a trained decoder attack as the generator of a WGAN-GP (`cem.md` §11).

    Each step queries `oracle` twice with a batch of `aux_images` (fresh keys: independent noise for
    the critic's and the generator's features; the second query only on generator steps) and runs
    `make_gan_step`; the loop is `mijax.train.fit_loop` (checkpoints in `workdir`, a rerun resumes).
    The reference trains on the training set and starts from the inference-time decoder (its file
    is overwritten); here both choices are the caller's (`generator_variables`, `aux_images`).

    Args:
        trained: the decoder attack to fine-tune (`train_decoder_attack`; with `sweep`, stacked), its
            network (e.g. `res_norm_decoder`, outputs in [0,1]) the generator.
        critic: the critic `Pure` (`mijax.models.dgwgan32`), initialised from `key`.
        oracle: the deployed edge, `query(x, key=k) -> z̃` (with `sweep`, a `BlackBox.stacked`).
        aux_images: `[num, height, width, channels]` in [0,1], the real images.
        config: the settings.
        key: PRNG key (critic initialisation, batch order, queries, penalties).
        workdir: checkpoint folder (None: no checkpoints).
        progress: show a progress bar.
        mesh: train on this device mesh (`mijax.mesh`): batches split over `data`, a sweep's models
            over `model`.
        sweep: stacked oracle features `[num_models, batch, ...]` and stacked `generator_variables`;
            one GAN per model (critics from the same initialisation), as one vmapped program.

    Returns:
        The fine-tuned `TrainedDecoder` (variables with a leading model axis if `sweep`).

    Raises:
        TypeError: if `trained` is not a `TrainedDecoder`, `critic` not a `Pure` or `oracle` not a
            `BlackBox`.
        ValueError: on images of the wrong shape or range, mismatched networks, a batch larger than
            the data, or invalid settings.
    """
    if not isinstance(trained, TrainedDecoder):
        raise TypeError(f"expected a TrainedDecoder (train_decoder_attack), got {type(trained).__name__}")
    generator, generator_variables = trained.decoder, trained.variables
    images, num_models = prepare_queries(generator, oracle, aux_images, config, sweep, name="generator")
    if not isinstance(critic, Pure):
        raise TypeError(f"expected critic as a mijax.nn.Pure, got {type(critic).__name__}")
    try:
        scores = jax.eval_shape(lambda v, x: critic.apply(v, x)[0], jax.eval_shape(critic.init, jax.random.key(0)),
                                jax.ShapeDtypeStruct((2, *images.shape[1:]), jnp.float32)).shape
    except (TypeError, ValueError) as e:   # e.g. a critic built for another image size
        scores = f"an error ({e})"
    if scores != (2,):
        raise ValueError(f"expected the critic to map images {images.shape[1:]} to one score each ([batch]), "
                         f"got {scores} for a batch of 2")
    lead = () if num_models is None else (num_models,)
    want = jax.tree.map(lambda a: lead + a.shape, jax.eval_shape(generator.init, jax.random.key(0)))
    if jax.tree.map(jnp.shape, generator_variables) != want:
        raise ValueError("expected generator_variables to be the generator's variables"
                         + (f" stacked over {num_models} models" if num_models else "")
                         + f", got shapes {jax.tree.map(jnp.shape, generator_variables)}")

    update = make_gan_step(generator, critic, config, len(images) // config.batch_size)
    if sweep:
        axes = GanState(None, 0, 0, 0, 0)
        update = vmap_models(update, in_axes=(axes, None, 0, 0, None), out_axes=(axes, 0))
    init_key, loop_key = jax.random.split(key)
    adam = _adam_direction(config)

    def init(generator_variables):
        critic_variables = critic.init(init_key)
        critic_opt = adam.init(critic_variables["params"])
        if num_models is not None:
            critic_variables, critic_opt = _stack((critic_variables, critic_opt), num_models)
            generator_opt = jax.vmap(lambda v: adam.init(v["params"]))(generator_variables)
        else:
            generator_opt = adam.init(generator_variables["params"])
        return GanState(jnp.zeros((), jnp.int32), generator_variables, critic_variables, generator_opt, critic_opt)

    def step(state: GanState, images, key, oracle):  # the oracle's weights are arguments of the program
        critic_query_key, generator_query_key, step_key = jax.random.split(key, 3)
        z_critic = oracle.query(images, critic_query_key)
        z_generator = jax.lax.cond(  # the second query only on generator steps
            (state.step + 1) % config.n_critic == 0,
            lambda: oracle.query(images, generator_query_key),
            lambda: jnp.zeros_like(z_critic))
        return update(state, images, z_critic, z_generator, step_key)

    # a copy: the loop donates its state, and jit would forward the caller's arrays into it
    state = jax.jit(init)(jax.tree.map(lambda a: jnp.array(a, copy=True), generator_variables))
    state = fit_loop(step, state, (images,), step_args=(oracle,), epochs=config.epochs, mesh=mesh,
                     stacked=num_models is not None,
                     batch_size=config.batch_size, key=loop_key, workdir=workdir,
                     progress=progress, description="gan fine-tuning")
    return TrainedDecoder(generator, state.generator, trained.normalization)
