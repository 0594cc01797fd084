"""Attacks on Ensembler at every knowledge level (Liu et al., arXiv 2401.10859; `ensembler.md`).

The secret of an Ensembler deployment is the client's head weights and its selector; the server
holds the N members. Two knowledge types make the levels structural:

- `ServerMembers` (A0, A1, A2): the N members' program and stacked variables, the *architecture*
  (untrained `Pure`s) of the client's head and tail, the shapes and the input normalisation. It has
  no field for the selector or the head's weights, and the attacks below A3 accept only this type.
- `KnownSelection` (A3, an upper bound): `ServerMembers` plus the deployed selector's weights (never
  the head's weights).

Every level trains shadow networks — a head ĥ, a combination of the members and a tail t̂ — through
the frozen members on the attacker's labelled auxiliary data with cross-entropy (He et al.'s
query-free attack, ACSAC 2019 §4.3, extended to a client tail), all shadows of a level as one
program (`train_shadows`, `mijax.stacks.map_models` over the shadows), then inverts the observed
z̃ through a shadow head with rMLE (`shadow_rmle`) or trains an inverse network on
(ĥ(x) + σε, x) pairs (`shadow_decoder`):

| level | combination of the members in the shadow | function |
|---|---|---|
| A0 | each single member (N shadows) | `a0_single_members` |
| A1 | sampled subsets, uniform weights (capped) | `a1_guessed_subsets` |
| A2 | a selector over all N learned end to end | `a2_learned_selector` |
| A3 | the true selector weights | `a3_true_selection` |

The attacker picks among its shadows by what it can measure: the shadow pipeline's accuracy on its
own data (`Shadows.accuracy`). R1 (query access to the deployed head) and R2 (its weights) are the
library's `inverse_network` on a `BlackBox` and `rmle` on a `WhiteBox`.

A curious server also sees the deployed traffic: `train_shadows(..., observed=z̃)` with
`LevelConfig.match_weight` > 0 adds a term matching the statistics of ĥ(x_aux) + σε to those of the
observed z̃ (`feature_statistics`) [mijax extension, not in He et al. or Liu et al.; off by default].
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mijax.attacks.knowledge import EvalProgram, WhiteBox, _check_program
from mijax.attacks.learned_inversion import InverseNetworkConfig, TrainedDecoder, train_inverse_network
from mijax.attacks.mle_inversion import RMLEConfig, rmle
from mijax.attacks.shadow import _pixel_edge
from mijax.data.transforms import Normalization
from mijax.defenses.ensembler import selector_weights
from mijax.nn import Pure, Sequential, Variables
from mijax.split import SplitModel
from mijax.stacks import map_models
from mijax.train import TrainState, fit_loop

PyTree = Any


@functools.cache
def _tail_pure(model: SplitModel) -> Pure:
    """The layers after the combiner (`fc`) as an untrained `Pure`: architecture only."""
    return Sequential(model.network.layers[model.network.index(model.tail) + 1:]).as_pure()


@functools.partial(jax.tree_util.register_dataclass, data_fields=["variables"],
                   meta_fields=["program", "head", "tail", "normalization", "feature_shape", "input_shape",
                                "num_classes"])
@dataclasses.dataclass(frozen=True, eq=False)
class ServerMembers:
    """What the server (and an attacker at A0–A2) holds: the N members and the client's architecture.

    Attributes:
        program: `program(member_variables, z) -> [batch, d]`, one member in eval mode.
        variables: the members' variables with a leading member axis (the pytree's leaves).
        head: the client head's architecture, an untrained `Pure` on images in [0, 1].
        tail: the client tail's architecture after the combiner, an untrained `Pure` `[batch, d] -> logits`.
        normalization: the head's input normalisation (public CIFAR statistics).
        feature_shape: shape of one z̃.
        input_shape: `(height, width, channels)`.
        num_classes: outputs of the tail.
    """

    program: Callable
    variables: PyTree
    head: Pure = dataclasses.field(kw_only=True)
    tail: Pure = dataclasses.field(kw_only=True)
    normalization: Normalization = dataclasses.field(kw_only=True)
    feature_shape: tuple[int, ...] = dataclasses.field(kw_only=True)
    input_shape: tuple[int, int, int] = dataclasses.field(kw_only=True)
    num_classes: int = dataclasses.field(kw_only=True)

    def __post_init__(self):
        _check_program("program", self.program)
        for name in ("feature_shape", "input_shape"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def members(self) -> int:
        return int(jax.tree.leaves(self.variables)[0].shape[0])

    def outputs(self, z: jax.Array) -> jax.Array:
        """`[N, batch, d]`: every member on `z`."""
        return map_models(lambda v: self.program(v, z), (0,))(self.variables)

    @classmethod
    def from_model(cls, model: SplitModel, variables: Variables) -> ServerMembers:
        """Hands over only the members' variables of a deployed Ensembler (`model.members` > 1 with a
        `combine` tail, e.g. `mijax.defenses.ensembler.ensembler_model`)."""
        if model.members < 2 or model.tail is None:
            raise ValueError(f"expected an ensemble with a client tail, got members={model.members}, "
                             f"tail={model.tail!r}")
        single = dataclasses.replace(model, members=1)
        return cls(EvalProgram(single, "cloud_apply"), model.cloud_variables(variables),
                   head=_pixel_edge(single, None)[0], tail=_tail_pure(model), normalization=model.normalization,
                   feature_shape=model.feature_shape(), input_shape=model.input_shape,
                   num_classes=model.num_classes)

    @classmethod
    def from_single(cls, model: SplitModel, variables: Variables) -> ServerMembers:
        """A one-member deployment (noise alone, Shredder: `resnet18` with tail `fc`) as N = 1."""
        if model.members != 1 or model.tail is None:
            raise ValueError(f"expected one member and a client tail, got members={model.members}, "
                             f"tail={model.tail!r}")
        cloud = jax.tree.map(lambda a: a[None], model.cloud_variables(variables))
        tail = Sequential(model.network.layers[model.network.index(model.tail):]).as_pure()
        return cls(EvalProgram(model, "cloud_apply"), cloud, head=_pixel_edge(model, None)[0], tail=tail,
                   normalization=model.normalization, feature_shape=model.feature_shape(),
                   input_shape=model.input_shape, num_classes=model.num_classes)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["members", "weights"], meta_fields=[])
@dataclasses.dataclass(frozen=True, eq=False)
class KnownSelection:
    """A3's knowledge: the server's members and the deployed selector's weights `[N]` (no head weights).

    Build it with `KnownSelection(ServerMembers.from_model(model, variables), deployed_weights(variables))`.
    """

    members: ServerMembers
    weights: jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class LevelConfig:
    """Settings of the shadow training and the inversions [unverified: the paper's attacks are unknown].

    Attributes:
        epochs: passes over the auxiliary data per shadow.
        batch_size: examples per step.
        learning_rate: Adam step size of the shadows.
        sigma: the noise the attacker adds between its shadow head and the members (it knows the
            deployment's σ, part of the architecture).
        max_subsets: A1's cap on sampled subsets.
        match_weight: weight λ_obs of the traffic-matching term (`feature_statistics`) added to the
            shadows' cross-entropy when `train_shadows` gets `observed` z̃ [mijax extension, not in
            He et al. 2019 or Liu et al.]; 0 is He et al.'s query-free attack.
        match: the statistics matched: "moments" (per-channel mean and variance) or "covariance"
            (per-channel means and the channel covariance over positions) [mijax extension].
            Measured (12-02, the test's fixture, A0–A3, λ 1 and 10, 2–20 epochs): the matched shadows'
            rMLE is no better than without (0.076–0.17 MSE against the mean image's 0.058), so the
            default stays 0; first/second channel moments do not pin the head's channels (the
            shadow's per-channel correlation with the deployed head stays ≤ 0.1).
        rmle: the inversion through a shadow head.
        decoder: the inverse network's training (pixel space, sigmoid decoder).
        decoder_width: channels of `mijax.models.decoders.decoder_for`.
    """

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    sigma: float = 0.5
    max_subsets: int = 8
    match_weight: float = 0.0
    match: str = "covariance"
    rmle: RMLEConfig = RMLEConfig(num_steps=300, learning_rate=0.05, tv_weight=0.05, optimizer="adam",
                                  space="pixel", eps=1e-8)
    decoder: InverseNetworkConfig = InverseNetworkConfig(epochs=10, batch_size=64)
    decoder_width: int = 32


@functools.partial(jax.tree_util.register_dataclass, data_fields=["heads", "accuracy", "weights"],
                   meta_fields=["head", "normalization", "input_shape", "level"])
@dataclasses.dataclass(frozen=True)
class Shadows:
    """A level's trained shadows (a leading shadow axis).

    Attributes:
        heads: the shadow heads' variables `[K, ...]`.
        accuracy: `[K]` each shadow pipeline's accuracy on the attacker's own data (its selection rule).
        weights: `[K, N]` each shadow's combination of the members after training.
        head: the head's architecture (`Pure` on images in [0, 1]).
        normalization, input_shape: of the head.
        level: "A0" … "A3".
    """

    heads: Variables
    accuracy: jax.Array
    weights: jax.Array
    head: Pure
    normalization: Normalization
    input_shape: tuple[int, int, int]
    level: str

    @property
    def best(self) -> int:
        """The shadow the attacker picks: the best accuracy on its own data."""
        return int(np.argmax(np.asarray(self.accuracy)))

    def white_box(self, index: int) -> WhiteBox:
        return WhiteBox(EvalProgram(self.head), jax.tree.map(lambda a: a[index], self.heads),
                        normalization=self.normalization, input_shape=self.input_shape)


def _check_members(knowledge) -> ServerMembers:
    # The guarantee below A3: a ServerMembers holds the members and architectures, nothing of the client.
    if type(knowledge) is not ServerMembers:
        raise TypeError(f"expected ServerMembers knowledge (the server's members only; build it with "
                        f"ServerMembers.from_model), got {type(knowledge).__name__}")
    return knowledge


@functools.cache
def _adam(learning_rate: float) -> optax.GradientTransformation:
    return optax.adam(learning_rate)  # one object per step size: compiled shadow steps are reused


@functools.cache
def _mapped_shadow_step(head: Pure, tail: Pure, optimizer, match: str | None):
    return map_models(_shadow_step(head, tail, optimizer, match), (0, None, None, None, None, None, None, None))


MATCHES = ("moments", "covariance")


def observed_statistics(observed, *, eps: float = 1e-3) -> dict:
    """The target of the traffic-matching term from observed z̃ `[M, *feature_shape]` (channels last):
    per-channel mean and standard deviation, and the channel correlation over all positions and
    inputs [mijax extension]."""
    z = np.asarray(observed, np.float64).reshape(-1, np.shape(observed)[-1])
    mean, std = z.mean(0), np.maximum(z.std(0), eps)
    u = (z - mean) / std
    return {"mean": jnp.asarray(mean, jnp.float32), "std": jnp.asarray(std, jnp.float32),
            "corr": jnp.asarray(u.T @ u / len(u), jnp.float32)}


def feature_statistics(z_tilde: jax.Array, target: dict, *, match: str) -> jax.Array:
    """The traffic-matching loss [mijax extension]: the batch's statistics of the shadow's ĥ(x) + σε,
    standardised by the observed traffic's per-channel mean and std, against those of the traffic.

    "moments": mean over channels of (standardised mean)² + (standardised variance − 1)²;
    "covariance": mean of (standardised mean)² + mean over channel pairs of (Ĉ − R)², Ĉ the batch's
    second-moment matrix of the standardised features and R the traffic's channel correlation.
    """
    u = (z_tilde.reshape(-1, z_tilde.shape[-1]) - target["mean"]) / target["std"]
    mean = jnp.mean(u, 0)
    if match == "moments":
        return jnp.mean(mean ** 2) + jnp.mean((jnp.mean(u ** 2, 0) - 1.0) ** 2)
    if match == "covariance":
        return jnp.mean(mean ** 2) + jnp.mean((u.T @ u / u.shape[0] - target["corr"]) ** 2)
    raise ValueError(f"expected match in {MATCHES}, got {match!r}")


def _shadow_step(head: Pure, tail: Pure, optimizer, match: str | None):
    """One step of the stacked shadows; `match` None leaves the traffic-matching term out of the program."""
    def step(state: TrainState, x, y, key, knowledge: ServerMembers, sigma, target, match_weight):
        mask, fixed, learn = state.defense_state
        head_key, noise_key, tail_key = jax.random.split(key, 3)

        def loss_fn(params):
            z, head_vars = head.apply({**state.variables["head"], "params": params["head"]}, x, train=True,
                                      key=head_key)
            z_tilde = z + sigma * jax.random.normal(noise_key, z.shape)
            outs = knowledge.outputs(z_tilde)
            weights = jnp.where(learn > 0, selector_weights(params["logits"], mask), fixed)
            logits, tail_vars = tail.apply({**state.variables["tail"], "params": params["tail"]},
                                           jnp.tensordot(weights, outs, axes=1), train=True, key=tail_key)
            loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
            if match is not None:
                loss = loss + match_weight * feature_statistics(z_tilde, target, match=match)
            return loss, (head_vars, tail_vars, logits)

        params = {"head": state.variables["head"]["params"], "tail": state.variables["tail"]["params"],
                  "logits": state.variables["logits"]}
        (loss, (head_vars, tail_vars, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, state.opt_state, params)
        params = optax.apply_updates(params, updates)
        variables = {"head": {**head_vars, "params": params["head"]}, "tail": {**tail_vars, "params": params["tail"]},
                     "logits": params["logits"]}
        metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}
        return TrainState(state.step + 1, variables, opt_state, state.defense_state), metrics

    return step


@functools.cache
def _shadow_eval(head: Pure, tail: Pure):
    def accuracy(variables, mask, fixed, learn, x, y, knowledge, sigma, key):
        z, _ = head.apply(variables["head"], x)
        outs = knowledge.outputs(z + sigma * jax.random.normal(key, z.shape))
        weights = jnp.where(learn > 0, selector_weights(variables["logits"], mask), fixed)
        logits, _ = tail.apply(variables["tail"], jnp.tensordot(weights, outs, axes=1))
        return jnp.sum(jnp.argmax(logits, -1) == y), weights
    return jax.jit(map_models(accuracy, (0, 0, 0, 0, None, None, None, None, None)))


def train_shadows(knowledge: ServerMembers, masks, fixed, learn, images, labels, *, config: LevelConfig,
                  key: jax.Array, level: str = "", workdir: str | pathlib.Path | None = None,
                  progress: bool = True, observed=None) -> Shadows:
    """Trains K shadows (head, combination, tail) through the frozen members as one program.

    Shadow k combines the members' outputs with `fixed[k]` (`[N]` weights) or, where `learn[k]` is 1,
    with a learned softmax selector over `masks[k]`.

    Args:
        knowledge: the server's members (`ServerMembers`; A3 passes `KnownSelection.members`).
        masks, fixed, learn: `[K, N]`, `[K, N]`, `[K]`.
        images, labels: the attacker's auxiliary data.
        config: training settings.
        key: initialisation (shadow k from `fold_in(key, k)`), order and steps.
        level: the label stored in the result.
        workdir, progress: see `mijax.train.fit_loop`.
        observed: z̃ the server received `[M, *feature_shape]` (deployed traffic, other inputs than
            the attacker's images), or None. With `config.match_weight` > 0 the shadows' loss adds
            `match_weight · feature_statistics` against this traffic [mijax extension].
    """
    _check_members(knowledge)
    if config.match not in MATCHES:
        raise ValueError(f"expected match in {MATCHES}, got {config.match!r}")
    if observed is None:
        if config.match_weight:
            raise ValueError("match_weight > 0 needs the observed traffic z̃ (observed=)")
        channels = knowledge.feature_shape[-1]
        target = {"mean": jnp.zeros(channels), "std": jnp.ones(channels), "corr": jnp.eye(channels)}
    else:
        if tuple(np.shape(observed)[1:]) != knowledge.feature_shape:
            raise ValueError(f"expected observed of shape [M, {knowledge.feature_shape}], got "
                             f"{np.shape(observed)}")
        target = observed_statistics(observed)
    masks, fixed = jnp.asarray(masks, jnp.float32), jnp.asarray(fixed, jnp.float32)
    learn = jnp.asarray(learn, jnp.float32)
    count, members = masks.shape
    if fixed.shape != (count, members) or learn.shape != (count,) or members != knowledge.members:
        raise ValueError(f"expected masks and fixed of shape [K, {knowledge.members}] and learn [K], got "
                         f"{masks.shape}, {fixed.shape}, {learn.shape}")
    images, labels = np.asarray(images, np.float32), np.asarray(labels)
    optimizer = _adam(float(config.learning_rate))
    head, tail = knowledge.head, knowledge.tail
    init_key, loop_key, eval_key = jax.random.split(key, 3)

    def init_one(k):
        return {"head": head.init(jax.random.fold_in(k, 0)), "tail": tail.init(jax.random.fold_in(k, 1)),
                "logits": jnp.zeros((members,))}

    # the networks eagerly (XLA-CPU compiles jitted threefry initialisers slowly); the optimiser state
    # jitted, so that its zero trees are distinct buffers (the step donates them)
    variables = jax.vmap(init_one)(jax.vmap(lambda k: jax.random.fold_in(init_key, k))(jnp.arange(count)))
    opt_state = jax.jit(jax.vmap(optimizer.init))(
        {"head": variables["head"]["params"], "tail": variables["tail"]["params"], "logits": variables["logits"]})
    # distinct buffers for every leaf: the step donates its state (a0 passes one array as masks and fixed)
    state = jax.tree.map(lambda a: jnp.array(np.asarray(a)), TrainState(
        jnp.zeros((count,), jnp.int32), variables, opt_state, (masks, fixed, learn)))
    step = _mapped_shadow_step(head, tail, optimizer, config.match if config.match_weight else None)
    sigma = jnp.float32(config.sigma)
    state = fit_loop(step, state, (images, labels),
                     step_args=(knowledge, sigma, target, jnp.float32(config.match_weight)), epochs=config.epochs,
                     batch_size=min(config.batch_size, len(images)), key=loop_key, workdir=workdir,
                     progress=progress, description=f"shadows {level}", stacked=True)
    correct, weights = 0, None
    evaluate = _shadow_eval(head, tail)
    for start in range(0, len(images), 256):
        c, weights = evaluate(state.variables, masks, fixed, learn, images[start:start + 256],
                              labels[start:start + 256], knowledge, sigma, jax.random.fold_in(eval_key, start))
        correct = correct + c
    return Shadows(state.variables["head"], correct / len(images), weights, head, knowledge.normalization,
                   knowledge.input_shape, level)


def a0_single_members(knowledge: ServerMembers, images, labels, *, config: LevelConfig, key: jax.Array,
                      **kw) -> Shadows:
    """A0: one shadow per single member (He et al.'s query-free attack through each member)."""
    n = _check_members(knowledge).members
    eye = jnp.eye(n)
    return train_shadows(knowledge, eye, eye, jnp.zeros(n), images, labels, config=config, key=key, level="A0",
                         **kw)


def guessed_subsets(members: int, count: int, key: jax.Array, *, size: int | None = None) -> np.ndarray:
    """`[K, N]` {0,1} masks of distinct non-empty subsets, K = min(count, 2^N − 1): random sizes, or all
    of one `size`; drawn from `key` (A1's guesses)."""
    total = 2 ** members - 1 if size is None else int(np.prod(range(members - size + 1, members + 1)) //
                                                      np.prod(range(1, size + 1)))
    count = min(count, total)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    chosen: list[tuple] = []
    while len(chosen) < count:
        if size is None:
            mask = tuple(int(b) for b in rng.integers(0, 2, members))
        else:
            picked = set(rng.choice(members, size, replace=False).tolist())
            mask = tuple(int(i in picked) for i in range(members))
        if any(mask) and mask not in chosen:
            chosen.append(mask)
    return np.asarray(chosen, np.float32)


def a1_guessed_subsets(knowledge: ServerMembers, images, labels, *, config: LevelConfig, key: jax.Array,
                       size: int | None = None, **kw) -> Shadows:
    """A1: shadows through sampled subsets of the members with uniform weights (`guessed_subsets`,
    capped at `config.max_subsets`; `size` if the attacker guesses P)."""
    n = _check_members(knowledge).members
    masks = guessed_subsets(n, config.max_subsets, jax.random.fold_in(key, 1), size=size)
    fixed = masks / masks.sum(1, keepdims=True)
    return train_shadows(knowledge, masks, fixed, np.zeros(len(masks)), images, labels, config=config,
                         key=key, level="A1", **kw)


def a2_learned_selector(knowledge: ServerMembers, images, labels, *, config: LevelConfig, key: jax.Array,
                        **kw) -> Shadows:
    """A2 (adaptive): one shadow whose selector over all N members is learned with its head and tail."""
    n = _check_members(knowledge).members
    return train_shadows(knowledge, np.ones((1, n)), np.full((1, n), 1.0 / n), np.ones(1), images, labels,
                         config=config, key=key, level="A2", **kw)


def a3_true_selection(knowledge: KnownSelection, images, labels, *, config: LevelConfig, key: jax.Array,
                      **kw) -> Shadows:
    """A3 (upper bound): one shadow through the true combination of the members."""
    if type(knowledge) is not KnownSelection:
        raise TypeError(f"expected KnownSelection knowledge (A3), got {type(knowledge).__name__}")
    weights = jnp.asarray(knowledge.weights, jnp.float32)[None]
    return train_shadows(knowledge.members, (weights > 0).astype(jnp.float32), weights, np.zeros(1), images,
                         labels, config=config, key=key, level="A3", **kw)


@functools.partial(jax.jit, static_argnames=("head", "normalization", "input_shape"))
def _rmle_all(heads, z, config, *, head, normalization, input_shape):
    def one(variables):
        return rmle(WhiteBox(EvalProgram(head), variables, normalization=normalization, input_shape=input_shape),
                    z, config=config)
    return map_models(one, (0,))(heads)


def shadow_rmle(shadows: Shadows, z_observed, *, config: RMLEConfig) -> jax.Array:
    """rMLE of `z_observed` through every shadow head: `[K, batch, H, W, C]` (index `shadows.best`)."""
    return _rmle_all(shadows.heads, jnp.asarray(z_observed), config, head=shadows.head,
                     normalization=shadows.normalization, input_shape=shadows.input_shape)


def shadow_decoder(shadows: Shadows, index: int, images, *, config: LevelConfig, key: jax.Array,
                   decoder: Pure | None = None, workdir: str | pathlib.Path | None = None,
                   progress: bool = True) -> TrainedDecoder:
    """An inverse network trained on (ĥ_index(x) + σε, x) over the attacker's images (fresh ε per batch)."""
    from mijax.models.decoders import decoder_for
    white = shadows.white_box(index)
    images = np.asarray(images, np.float32)
    z = np.concatenate([np.asarray(_edge(white, images[s:s + 256])) for s in range(0, len(images), 256)])
    decoder = decoder or decoder_for(z.shape[1:], images.shape[1:], width=config.decoder_width)
    sigma = config.sigma
    return train_inverse_network(decoder, z, images, config=config.decoder, key=key, workdir=workdir,
                                 transform=lambda f, k: f + sigma * jax.random.normal(k, f.shape),
                                 progress=progress)


@jax.jit
def _edge(white: WhiteBox, x):
    return white.edge(x)
