"""CEM's decoder attack: a noise-aware inverse network trained on fresh queries (Xia et al. 2025).

The attacker (the server receiving z̃) queries the deployed edge with its auxiliary images x ∈ [0,1]
and trains a decoder `d_ψ` (by default `res_norm_decoder`, `cem.md` §11) on

    min_ψ  (1/B) Σ_i (1/d) ‖d_ψ(z̃_i) − x_i‖²,    z̃_i = f_eval(x_i) + σ·ε_i,

with the pairs generated on the fly inside each step: a fresh query, hence **fresh noise per
batch** (the attacker knows σ; a noisy `BlackBox` draws it). Adam (lr 1e-3, PyTorch's coupled
weight decay 1e-4: `wd·ψ` is added to the gradient before Adam), cosine annealing per epoch
(T_max = epochs, η_min 1e-5), batch 256, 50 epochs; the final decoder is the attack,
`x̂ = d_ψ(z̃)` (`decoder_attack`).

Everything is pure: the step (`make_decoder_attack_step`) is a function of the decoder state and the
batch, so one program trains a decoder per model of a sweep (`train_decoder_attack(..., sweep=True)`
with a `BlackBox.stacked` oracle, or `jax.vmap` of the step yourself).

Example:
    >>> oracle = BlackBox.from_model(model, variables, defense=defenses.gaussian_noise(sigma=0.05))
    >>> aux, targets = cem_attack_data("inference-time", train=train, test=test)
    >>> decoder = res_norm_decoder(feature_shape=model.feature_shape(), image_shape=model.input_shape)
    >>> trained = train_decoder_attack(decoder, oracle, aux.images, key=jax.random.key(200))
    >>> x_hat = decoder_attack(trained, oracle.query(targets.images[:256], key=k))
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mijax.attacks.knowledge import BlackBox
from mijax.attacks.learned_inversion import TrainedDecoder, check_decoder
from mijax.nn import Pure
from mijax.stacks import map_models
from mijax.steps import descend
from mijax.train import TrainState, fit_loop


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecoderAttackConfig:
    """Training settings of the decoder attack; defaults are CEM's code (`cem.md` §11).

    Attributes:
        epochs: passes over the auxiliary images (50).
        batch_size: images per step (256).
        learning_rate: Adam's initial step size (1e-3).
        weight_decay: coupled L2 (PyTorch Adam's `weight_decay`, 1e-4).
        min_learning_rate: η_min of the cosine annealing (1e-5).
        t_max: cosine period T_max in epochs (None: `epochs`).
    """

    epochs: int = 50
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    min_learning_rate: float = 1e-5
    t_max: int | None = None

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"expected epochs >= 1 and batch_size >= 1, got {self.epochs}, {self.batch_size}")
        if not (self.learning_rate > 0 and self.weight_decay >= 0 and self.min_learning_rate >= 0):
            raise ValueError(f"expected learning_rate > 0, weight_decay >= 0, min_learning_rate >= 0, got "
                             f"{self.learning_rate}, {self.weight_decay}, {self.min_learning_rate}")
        if self.t_max is not None and self.t_max < 1:
            raise ValueError(f"expected t_max >= 1 or None, got {self.t_max}")


def cosine_per_epoch(learning_rate: float, *, t_max: int, min_learning_rate: float = 0.0,
                     steps_per_epoch: int) -> optax.Schedule:
    """PyTorch's `CosineAnnealingLR(T_max)` stepped once per epoch, as a schedule over steps.

    `lr(step) = η_min + (lr₀ − η_min)·(1 + cos(π·e/T_max))/2` with epoch `e = ⌊step/steps_per_epoch⌋`
    (the closed form PyTorch's recursion follows; past T_max it rises again, as in PyTorch).
    """
    if t_max < 1 or steps_per_epoch < 1:
        raise ValueError(f"expected t_max >= 1 and steps_per_epoch >= 1, got {t_max}, {steps_per_epoch}")

    def schedule(step):
        epoch = (jnp.asarray(step) // steps_per_epoch).astype(jnp.float32)
        return min_learning_rate + (learning_rate - min_learning_rate) * 0.5 * (1 + jnp.cos(jnp.pi * epoch / t_max))

    return schedule


def decoder_attack_optimizer(config: DecoderAttackConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """`torch.optim.Adam(lr, weight_decay=wd)` with per-epoch cosine annealing, as optax."""
    schedule = cosine_per_epoch(config.learning_rate, t_max=config.t_max or config.epochs,
                                min_learning_rate=config.min_learning_rate, steps_per_epoch=steps_per_epoch)
    # coupled L2: PyTorch adds wd·param to the gradient before the moments (not AdamW)
    return optax.chain(optax.add_decayed_weights(config.weight_decay), optax.scale_by_adam(),
                       optax.scale_by_learning_rate(schedule))


def make_decoder_attack_step(decoder: Pure, optimizer: optax.GradientTransformation) -> Callable:
    """`step(state, images, z_tilde, key) -> (state, metrics)`: one MSE update of the decoder.

    Pure: vmap it over stacked states and features to train one decoder per model (one compiled
    program), e.g. `jax.vmap(step, in_axes=(0, None, 0, None))`.

    Args:
        decoder: `[batch, *feature] -> [batch, *image]`, trained in train mode (BatchNorm statistics
            are carried in `state.variables`).
        optimizer: over `variables["params"]` (`decoder_attack_optimizer`).

    Returns:
        The step; `state` is a `mijax.train.TrainState` (its `defense_state` unused), `images`
        `[batch, height, width, channels]` in [0,1], `z_tilde` `[batch, ...]`; metrics `{"mse"}`.
    """

    def step(state: TrainState, images, z_tilde, key):
        def loss_fn(params):
            out, variables = decoder.apply({**state.variables, "params": params}, z_tilde, train=True, key=key)
            per_example = jnp.mean(jnp.square(out - images).reshape(len(images), -1), axis=-1)
            return jnp.mean(per_example), variables

        params, opt_state, loss, variables = descend(loss_fn, optimizer, state.variables["params"], state.opt_state)
        return TrainState(state.step + 1, {**variables, "params": params}, opt_state, ()), {"mse": loss}

    return step


def _check_images(images, input_shape, name="aux_images") -> np.ndarray:
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(input_shape):
        raise ValueError(f"expected {name} of shape [num, {', '.join(map(str, input_shape))}] (the oracle's "
                         f"input), got {images.shape}")
    if images.size and (images.min() < 0 or images.max() > 1):
        raise ValueError(f"expected {name} in [0, 1], got values in [{images.min():.3g}, {images.max():.3g}]")
    return images


def _feature_shape(oracle: BlackBox, sweep: bool) -> tuple[tuple[int, ...], int | None]:
    """The oracle's feature shape and, with `sweep`, its number of stacked models."""
    two, three = (jax.eval_shape(oracle.query, jax.ShapeDtypeStruct((n, *oracle.input_shape), jnp.float32),
                                 jax.random.key(0)) for n in (2, 3))
    stacked = two.ndim >= 3 and two.shape[0] == three.shape[0] and (two.shape[1], three.shape[1]) == (2, 3)
    if sweep and not stacked:
        raise ValueError(f"expected a stacked oracle returning [num_models, batch, ...] with sweep=True (see "
                         f"BlackBox.stacked), got output shape {two.shape} for a batch of 2")
    return (tuple(two.shape[2:]), int(two.shape[0])) if sweep else (tuple(two.shape[1:]), None)


def _stack(tree, num: int):
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (num, *jnp.shape(a))).copy(), tree)


def prepare_queries(decoder: Pure, oracle: BlackBox, aux_images, config, sweep: bool,
                    name: str = "decoder") -> tuple[np.ndarray, int | None]:
    """Checks the inputs of a decoder-training attack; returns the images and the number of stacked
    models (None without `sweep`)."""
    config.validate()
    if not isinstance(oracle, BlackBox):
        raise TypeError(f"expected oracle as a BlackBox, got {type(oracle).__name__}")
    images = _check_images(aux_images, oracle.input_shape)
    if not config.batch_size <= len(images):
        raise ValueError(f"expected config.batch_size <= {len(images)} (the number of aux_images), got "
                         f"{config.batch_size}")
    feature_shape, num_models = _feature_shape(oracle, sweep)
    check_decoder(decoder, feature_shape, images.shape[1:], name=name)
    return images, num_models


def train_decoder_attack(decoder: Pure, oracle: BlackBox, aux_images, *,
                         config: DecoderAttackConfig = DecoderAttackConfig(), key: jax.Array,
                         workdir: str | pathlib.Path | None = None, progress: bool = True,
                         sweep: bool = False, mesh=None) -> TrainedDecoder:
    """Trains CEM's noise-aware decoder on fresh queries of the oracle (`cem.md` §11).

    Each step queries `oracle` with a batch of `aux_images` (a fresh key per step, so a noisy oracle
    adds fresh noise per batch) and takes one MSE step in pixel space; runs `mijax.train.fit_loop`
    (checkpoints in `workdir`, a rerun resumes).

    Args:
        decoder: `[batch, *feature] -> [batch, *image]` with outputs in [0,1] (e.g.
            `mijax.models.res_norm_decoder`).
        oracle: the deployed edge, `query(x, key=k) -> z̃` (key optional for a deterministic oracle).
        aux_images: the attacker's images `[num, height, width, channels]` in [0,1]
            (`cem_attack_data`).
        config: training settings.
        key: PRNG key (initialisation, batch order, queries, steps).
        workdir: checkpoint folder (None: no checkpoints).
        progress: show a progress bar.
        mesh: train on this device mesh (`mijax.mesh`): batches split over `data`, a sweep's models
            over `model`.
        sweep: the oracle returns stacked features `[num_models, batch, ...]` (`BlackBox.stacked`);
            one decoder per model is trained, all from the same initialisation, as one vmapped program.

    Returns:
        The `TrainedDecoder` (its variables with a leading model axis if `sweep`).

    Raises:
        TypeError: if `decoder` is not a `Pure` or `oracle` not a `BlackBox`.
        ValueError: on images of the wrong shape or range, a decoder whose output does not match the
            images, a batch larger than the data, or invalid settings.
    """
    images, num_models = prepare_queries(decoder, oracle, aux_images, config, sweep)
    optimizer = decoder_attack_optimizer(config, len(images) // config.batch_size)
    update = make_decoder_attack_step(decoder, optimizer)
    if sweep:
        update = map_models(update, (0, None, 0, None))
    init_key, loop_key = jax.random.split(key)

    def init():
        # the network eagerly: its initialisers' small programs are compiled once per shape and reused
        # by every later decoder, where a jitted init compiles them all again (~5-20 s on CPU)
        variables = decoder.init(init_key)
        state = jax.jit(lambda v: TrainState(jnp.zeros((), jnp.int32), v, optimizer.init(v["params"]), ()))(variables)
        return state if num_models is None else jax.jit(_stack, static_argnums=1)(state, num_models)

    def step(state, images, key, oracle):  # the oracle's weights are arguments of the program
        query_key, step_key = jax.random.split(key)
        return update(state, images, oracle.query(images, query_key), step_key)

    state = fit_loop(step, init(), (images,), step_args=(oracle,), epochs=config.epochs, mesh=mesh,
                     stacked=num_models is not None,
                     batch_size=config.batch_size, key=loop_key, workdir=workdir,
                     progress=progress, description="decoder attack")
    return TrainedDecoder(decoder, state.variables)


def decoder_attack(trained: TrainedDecoder, z_observed: jax.typing.ArrayLike) -> jax.Array:
    """Reconstructs images from observed features with a trained decoder: `x̂ = clip(d_ψ(z̃), 0, 1)`.

    Pure and jittable (eval mode); vmap it over a sweep's stacked `trained` and `z_observed`.
    Large sets: call it per batch (or `jax.lax.map` over chunks).

    Args:
        trained: the trained decoder (`train_decoder_attack`, `gan_finetune`).
        z_observed: `[batch, ...]` transmitted features z̃.

    Returns:
        `x_hat` `[batch, height, width, channels]` in [0,1].

    Raises:
        TypeError: if `trained` is not a `TrainedDecoder`.
        ValueError: if `z_observed` has no batch axis.
    """
    if not isinstance(trained, TrainedDecoder):
        raise TypeError(f"expected a TrainedDecoder (train_decoder_attack), got {type(trained).__name__}")
    z_observed = jnp.asarray(z_observed)
    if z_observed.ndim < 2:
        raise ValueError(f"expected z_observed of shape [batch, ...], got {z_observed.shape}")
    return trained.decode(z_observed)


