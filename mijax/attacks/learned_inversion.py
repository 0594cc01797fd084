"""Black-box inverse-network attack (He et al., ACSAC 2019 §4.2; `he2019.md` §4).

The attacker can only query the deployed edge, `z̃ = query(x)`. It queries its own images, trains a
decoder `d_ψ` on the pairs,

    min_ψ  (1/m) Σ_i ‖d_ψ(z̃_i) − t(x_i)‖²,

and reconstructs `x̂ = t⁻¹(d_ψ(z̃))` from an observed feature. `t` is the target space: pixels
(`InverseNetworkConfig()`, for a sigmoid-output decoder such as `decoder_for`'s default) or a
normalised space (`InverseNetworkConfig(normalization=...)`, what the authors' code does with
`he2019_decoder`: MSE against normalised images, then de-normalise and clip for metrics).

The attacker's images come in the paper's three settings (`attacker_images`): the victim's training
set, other data of the same distribution, or N(0,1) noise images. The decoder is any `Pure`, and the
features may be recomputed per batch (`train_inverse_network(decoder, query_fn, images, ...)`, or a
`transform` adding fresh noise to stored features), which is how noise-aware decoders train.

Example:
    >>> oracle = BlackBox.from_model(model, variables)
    >>> decoder = mijax.models.decoders.he2019_decoder("relu22", "cifar10")
    >>> config = InverseNetworkConfig(normalization=model.normalization)
    >>> x_hat = inverse_network(oracle, z_tilde, config=config, key=key, decoder=decoder, images=aux)
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mijax.attacks.knowledge import BlackBox
from mijax.data.transforms import Normalization
from mijax.nn import Pure, Variables
from mijax.optim import torch_amsgrad
from mijax.steps import descend
from mijax.train import TrainState, fit_loop


def he2019_optimizer(learning_rate: float, *, eps: float, halve_every: int, steps_per_epoch: int,
                     legacy_eps: bool = True) -> optax.GradientTransformation:
    """PyTorch AMSGrad with the step size halved every `halve_every` epochs (the authors' code, which
    ran PyTorch 1.0: `legacy_eps` is its eps rule, see `mijax.optim.torch_amsgrad`).

    The code sets `lr /= 2` after every `halve_every`-th epoch; as an optax staircase schedule over
    steps that is `lr · 0.5^⌊step / (halve_every · steps_per_epoch)⌋`.
    """
    schedule = optax.exponential_decay(learning_rate, transition_steps=halve_every * steps_per_epoch,
                                       decay_rate=0.5, staircase=True)
    return torch_amsgrad(schedule, eps=eps, legacy_eps=legacy_eps)


def check_he2019_schedule(config) -> None:
    """Raises unless a config's `epochs`, `batch_size`, `halve_every` >= 1 and `learning_rate` > 0."""
    for name in ("epochs", "batch_size", "halve_every"):
        if getattr(config, name) < 1:
            raise ValueError(f"expected {name} >= 1, got {getattr(config, name)}")
    if not config.learning_rate > 0:
        raise ValueError(f"expected learning_rate > 0, got {config.learning_rate}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class InverseNetworkConfig:
    """Training settings of the inverse network; defaults are the authors' code (`he2019.md` §4).

    Attributes:
        epochs: passes over the attacker's pairs (50).
        batch_size: pairs per step (32).
        learning_rate: initial AMSGrad step size (1e-3), halved every `halve_every` epochs (10).
        eps: AMSGrad epsilon (1e-3).
        halve_every: epochs between halvings of the step size.
        legacy_eps: PyTorch < 1.3's AMSGrad eps rule, as the authors ran (`mijax.optim.torch_amsgrad`).
        normalization: the target space. None (default): the decoder outputs pixels (use a sigmoid
            output), the loss is MSE in pixel space and `x̂ = clip(d(z̃), 0, 1)`. A `Normalization`:
            the decoder outputs normalised images (a linear output, as `he2019_decoder`), the loss
            is MSE against `normalize(x)` and `x̂ = clip(denormalize(d(z̃)), 0, 1)` — the code's setting.
        requery: in `inverse_network`, query the oracle afresh for every batch inside the training
            step (fresh defense noise per batch); the oracle must accept `query(x, key=k)`.
    """

    epochs: int = 50
    batch_size: int = 32
    learning_rate: float = 1e-3
    eps: float = 1e-3
    halve_every: int = 10
    legacy_eps: bool = True
    normalization: Normalization | None = None
    requery: bool = False

    def validate(self) -> None:
        check_he2019_schedule(self)

    def optimizer(self, steps_per_epoch: int) -> optax.GradientTransformation:
        return he2019_optimizer(self.learning_rate, eps=self.eps, halve_every=self.halve_every,
                                legacy_eps=self.legacy_eps,
                                steps_per_epoch=steps_per_epoch)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["variables"],
                   meta_fields=["decoder", "normalization"])
@dataclasses.dataclass(frozen=True)
class TrainedDecoder:
    """A trained inverse network, what every learned decoder attack returns (`train_inverse_network`,
    `train_decoder_attack`, `gan_finetune`). A pytree of its variables (stacked in sweeps: vmap
    `decode` over them), the network and the target space static.

    Attributes:
        decoder: the network, `[batch, *feature] -> [batch, *image]`.
        variables: its variables.
        normalization: the target space it was trained in (None: pixels).
    """

    decoder: Pure
    variables: Variables
    normalization: Normalization | None = None

    def decode(self, z: jax.Array) -> jax.Array:
        """`x̂ ∈ [0,1]` `[batch, height, width, channels]` from features `z` (eval mode, pure)."""
        out, _ = self.decoder.apply(self.variables, jnp.asarray(z))
        if self.normalization is not None:
            out = self.normalization.denormalize(out)
        return jnp.clip(out, 0.0, 1.0)


def _check_images(images, name="images") -> np.ndarray:
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"expected {name} of shape [num, height, width, channels], got {images.shape}")
    return images


def query_dataset(knowledge: BlackBox, images, *, batch_size: int = 256,
                  key: jax.Array | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Queries the oracle with the attacker's images: the training pairs `(z̃, x)`.

    Args:
        knowledge: the black-box oracle.
        images: `[num, height, width, channels]` in [0,1], the attacker's query images.
        batch_size: images per query call.
        key: the oracle is called as `query(x, key=fold_in(key, i))`, a fresh key per batch (a
            stochastic oracle such as `BlackBox.from_model(..., defense=noise)` needs it).

    Returns:
        `(features [num, ...], images [num, height, width, channels])` as NumPy arrays.

    Raises:
        TypeError: if `knowledge` is not a `BlackBox`.
        ValueError: on images of the wrong shape, or a non-positive batch size.
    """
    if not isinstance(knowledge, BlackBox):
        raise TypeError(f"expected a BlackBox oracle, got {type(knowledge).__name__}")
    images = _check_images(images)
    if tuple(images.shape[1:]) != tuple(knowledge.input_shape):
        raise ValueError(f"expected images of shape [num, {', '.join(map(str, knowledge.input_shape))}], "
                         f"got {images.shape}")
    if batch_size < 1:
        raise ValueError(f"expected batch_size >= 1, got {batch_size}")
    query = jax.jit(lambda oracle, x, k: oracle.query(x, k))  # the oracle's arrays as arguments
    outputs = []
    for i, start in enumerate(range(0, len(images), batch_size)):
        chunk = images[start:start + batch_size]
        size = len(chunk)
        if size < batch_size and len(images) > batch_size:  # one compiled shape
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - size, 0)])
        k = None if key is None else jax.random.fold_in(key, i)
        outputs.append(np.asarray(query(knowledge, chunk, k))[:size])
    return np.concatenate(outputs), images


def check_decoder(decoder: Pure, feature_shape, image_shape, name: str = "the decoder") -> None:
    """Raises unless `decoder` is a `Pure` mapping `[batch, *feature_shape]` to `[batch, *image_shape]`."""
    if not isinstance(decoder, Pure):
        raise TypeError(f"expected {name} as a mijax.nn.Pure, got {type(decoder).__name__}")
    variables = jax.eval_shape(decoder.init, jax.random.key(0))
    out = jax.eval_shape(lambda v, z: decoder.apply(v, z)[0], variables,
                         jax.ShapeDtypeStruct((2, *feature_shape), jnp.float32))
    if tuple(out.shape[1:]) != tuple(image_shape):
        raise ValueError(f"expected {name} to map features {tuple(feature_shape)} to images "
                         f"{tuple(image_shape)}, got output {tuple(out.shape[1:])}")


def train_inverse_network(decoder: Pure, features, images, *,
                          config: InverseNetworkConfig = InverseNetworkConfig(), key: jax.Array,
                          transform: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
                          workdir: str | pathlib.Path | None = None, checkpoint_every: int | None = None,
                          callback: Callable[[int, TrainState], None] | None = None,
                          progress: bool = True, mesh=None) -> TrainedDecoder:
    """Trains a decoder on (feature, image) pairs with MSE (He et al. ACSAC 2019 Eq. 4).

    Runs `mijax.train.fit_loop` (checkpoints to `workdir`, a rerun resumes) with PyTorch AMSGrad,
    the step size halved every `config.halve_every` epochs.

    Args:
        decoder: any `Pure` mapping `[batch, *feature] -> [batch, *image]` (BatchNorm allowed).
        features: the attacker's features `[num, ...]` paired with `images` (`query_dataset`), or a
            `BlackBox` queried afresh with each batch inside the step (its arrays enter the compiled
            step as arguments), or a jittable function `features(x, key) -> z̃`.
        images: `[num, height, width, channels]` in [0,1].
        config: training settings and target space.
        key: PRNG key (initialisation, batch order, per-step keys).
        transform: optional `transform(z, key) -> z` applied to each batch's features inside the
            step, e.g. fresh Gaussian noise for a noise-aware decoder.
        workdir, checkpoint_every, callback, progress, mesh: see `mijax.train.fit_loop`.

    Returns:
        The `TrainedDecoder`.

    Raises:
        ValueError: on mismatched shapes (features vs images, decoder output vs images), a batch
            larger than the data, or invalid settings.
    """
    config.validate()
    images = _check_images(images)
    num = len(images)
    step_args = ()
    if isinstance(features, BlackBox) or callable(features):
        oracle = features if isinstance(features, BlackBox) else None
        step_args = (oracle,)
        feature_fn = (lambda oracle, x, k: oracle.query(x, k)) if oracle else (lambda _, x, k: features(x, k))
        feature_shape = jax.eval_shape(feature_fn, oracle, jax.ShapeDtypeStruct((2, *images.shape[1:]), jnp.float32),
                                       jax.random.key(0)).shape[1:]
        arrays = (images,)
    else:
        feature_fn = None
        features = np.asarray(features, np.float32)
        if features.ndim < 2 or len(features) != num:
            raise ValueError(f"expected features of shape [{num}, ...] matching images, got {features.shape}")
        feature_shape = features.shape[1:]
        arrays = (features, images)
    check_decoder(decoder, feature_shape, images.shape[1:])
    if not 0 < config.batch_size <= num:
        raise ValueError(f"expected config.batch_size in [1, {num}], got {config.batch_size}")
    optimizer = config.optimizer(num // config.batch_size)
    norm = config.normalization
    init_key, loop_key = jax.random.split(key)

    def init():
        # the network eagerly (XLA-CPU compiles jitted threefry initialisers very slowly); the optimizer
        # state jitted, so that its zero trees are distinct buffers (the step donates them)
        variables = decoder.init(init_key)
        opt_state = jax.jit(optimizer.init)(variables["params"])
        return TrainState(jnp.zeros((), jnp.int32), variables, opt_state, ())

    def step(state: TrainState, *batch):
        if step_args:
            *batch, oracle = batch
        *batch, key = batch
        feature_key, transform_key, decoder_key = jax.random.split(key, 3)
        if feature_fn is None:
            z, x = batch
        else:
            (x,) = batch
            z = jax.lax.stop_gradient(feature_fn(oracle, x, feature_key))
        if transform is not None:
            z = transform(z, transform_key)
        target = x if norm is None else norm.normalize(x)

        def loss_fn(params):
            out, variables = decoder.apply({**state.variables, "params": params}, z, train=True,
                                           key=decoder_key)
            per_example = jnp.mean((out - target).reshape(len(x), -1) ** 2, axis=-1)
            return jnp.mean(per_example), variables

        params, opt_state, loss, variables = descend(loss_fn, optimizer, state.variables["params"], state.opt_state)
        return TrainState(state.step + 1, {**variables, "params": params}, opt_state, ()), {"mse": loss}

    state = fit_loop(step, init(), arrays, step_args=step_args, epochs=config.epochs, mesh=mesh,
                     batch_size=config.batch_size, key=loop_key, workdir=workdir,
                     checkpoint_every=checkpoint_every, callback=callback, progress=progress,
                     description="inverse network")
    return TrainedDecoder(decoder, state.variables, norm)


def inverse_network(knowledge: BlackBox | TrainedDecoder, z_observed, *,
                    config: InverseNetworkConfig = InverseNetworkConfig(), key: jax.Array | None = None,
                    decoder: Pure | None = None, images=None, query_key: jax.Array | None = None,
                    workdir: str | pathlib.Path | None = None, progress: bool = True, mesh=None) -> jax.Array:
    """Reconstructs images from observed features with an inverse network (black-box attack).

    With a `BlackBox`, runs the whole attack: queries the oracle with the attacker's `images`
    (`query_dataset`, or per batch if `config.requery`), trains `decoder`
    (`train_inverse_network`) and decodes `z_observed`. With a `TrainedDecoder`, only decodes
    (pure and jittable).

    Args:
        knowledge: the query oracle, or an already trained decoder.
        z_observed: `[batch, ...]` transmitted features z̃.
        config: training settings and target space (ignored for a `TrainedDecoder`).
        key: PRNG key for training (required with a `BlackBox`).
        decoder: the untrained decoder `Pure` (with a `BlackBox`), e.g. `decoder_for(...)`.
        images: the attacker's query images `[num, height, width, channels]` in [0,1] (with a
            `BlackBox`), e.g. from `attacker_images`.
        query_key: randomness of a stochastic oracle (`query(x, key=...)`); None for a
            deterministic one.
        workdir, progress, mesh: checkpoints, progress bar and device mesh of the training.

    Returns:
        `x_hat` `[batch, height, width, channels]` in [0,1].

    Raises:
        TypeError: if `knowledge` is neither a `BlackBox` nor a `TrainedDecoder`.
        ValueError: on missing or mismatched arguments.
    """
    if isinstance(knowledge, TrainedDecoder):
        if decoder is not None or images is not None:
            raise ValueError("a TrainedDecoder is used as is: pass neither decoder nor images")
        return knowledge.decode(z_observed)
    if not isinstance(knowledge, BlackBox):
        raise TypeError(f"expected a BlackBox oracle or a TrainedDecoder, got {type(knowledge).__name__}")
    if decoder is None or images is None or key is None:
        raise ValueError("the black-box attack needs decoder, images and key")
    expected = jax.eval_shape(knowledge.query, jax.ShapeDtypeStruct((1, *knowledge.input_shape), jnp.float32),
                              jax.random.key(0)).shape[1:]
    z_observed = jnp.asarray(z_observed)
    if tuple(z_observed.shape[1:]) != tuple(expected):
        raise ValueError(f"expected z_observed of shape [batch, {', '.join(map(str, expected))}] (the "
                         f"oracle's output), got {z_observed.shape}")
    if config.requery:
        features, images = knowledge, _check_images(images)
    else:
        features, images = query_dataset(knowledge, images, key=query_key)
    trained = train_inverse_network(decoder, features, images, config=config, key=key, workdir=workdir,
                                    progress=progress, mesh=mesh)
    return _decode(trained.variables, z_observed, decoder=trained.decoder, normalization=trained.normalization)


@functools.partial(jax.jit, static_argnames=("decoder", "normalization"))
def _decode(variables, z, *, decoder, normalization):
    # variables as an argument, not closure constants (XLA would fold them into the program)
    return TrainedDecoder(decoder, variables, normalization).decode(z)
