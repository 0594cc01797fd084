"""Query-free shadow-model attack (He et al., ACSAC 2019 §4.3; `he2019.md` §5).

The attacker runs the cloud `g` but can neither query the edge nor see its weights. It has labelled
data of the training distribution and

1. trains a shadow edge `ĥ` through the **frozen** cloud: `min_ĥ Σ_i CE(g(ĥ(x_i)), y_i)`, so that
   `ĥ` learns to produce features the cloud understands — features close to the victim's `f`;
2. inverts the victim's real `z̃` through the shadow with white-box rMLE:
   `x̂ = argmin_x ‖ĥ(x) − z̃‖² + λ_TV·TV(x)` (`mijax.attacks.mle_inversion`).

The shadow has the victim edge's architecture ("same net": pass a fresh `SplitModel`) or another one
("diff net": `he2019_shadow(cut, dataset)` or any `Pure`). The attack takes a `QueryFree`, which
holds the cloud and shapes only, so the victim's edge parameters cannot reach it.

Defaults are the authors' code (`inverse_query_free_CIFAR.py`): shadow training with PyTorch AMSGrad
(lr 1e-3, eps 1e-3, batch 32, 50 epochs, lr halved every 10), inversion in normalised space from 0
with 500 iterations, lr 0.1, λ_TV = 2.

Example:
    >>> attacker = QueryFree.from_model(model, variables)             # cloud only
    >>> x_hat = shadow_attack(attacker, z_tilde, key=key, shadow=lenet(cut="relu2"),
    ...                       images=aux.images, labels=aux.labels)
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mijax.attacks.knowledge import EvalProgram, QueryFree, WhiteBox
from mijax.attacks.learned_inversion import check_he2019_schedule, he2019_optimizer
from mijax.attacks.mle_inversion import RMLEConfig, rmle
from mijax.data.transforms import Normalization
from mijax.nn import Conv2d, Layer, Pure, Sequential, Variables, max_pool, pure
from mijax.split import SplitModel
from mijax.steps import descend
from mijax.train import TrainState, fit_loop

PIXELS = Normalization(mean=(0.0,), std=(1.0,))


def _code_inversion() -> RMLEConfig:
    return RMLEConfig(num_steps=500, learning_rate=0.1, tv_weight=2.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShadowConfig:
    """Settings of the query-free attack; defaults are the authors' code.

    Attributes:
        epochs: passes over the attacker's data when training the shadow (50).
        batch_size: images per shadow training step (32).
        learning_rate: initial AMSGrad step size (1e-3), halved every `halve_every` epochs (10).
        eps: AMSGrad epsilon (1e-3).
        halve_every: epochs between halvings of the step size.
        legacy_eps: PyTorch < 1.3's AMSGrad eps rule, as the authors ran (`mijax.optim.torch_amsgrad`).
        inversion: the rMLE settings against the shadow (500 iterations, lr 0.1, λ_TV 2, code variant).
    """

    epochs: int = 50
    batch_size: int = 32
    learning_rate: float = 1e-3
    eps: float = 1e-3
    halve_every: int = 10
    legacy_eps: bool = True
    inversion: RMLEConfig = dataclasses.field(default_factory=_code_inversion)

    def validate(self) -> None:
        check_he2019_schedule(self)
        self.inversion.validate()


@functools.partial(jax.tree_util.register_dataclass, data_fields=["variables"],
                   meta_fields=["edge", "normalization", "input_shape"])
@dataclasses.dataclass(frozen=True)
class TrainedShadow:
    """A shadow edge trained through the cloud: a white-box stand-in for the victim's edge.

    Attributes:
        edge: `apply(variables, x)` on images `x ∈ [0,1]` (normalises inside).
        variables: the shadow's variables (never the victim's).
        normalization: the shadow's input normalisation (rMLE optimises in that space).
        input_shape: `(height, width, channels)`.
    """

    edge: Pure
    variables: Variables
    normalization: Normalization
    input_shape: tuple[int, int, int]

    def white_box(self) -> WhiteBox:
        """The shadow as a `WhiteBox` for `mijax.attacks.mle_inversion`."""
        return WhiteBox(EvalProgram(self.edge), self.variables, normalization=self.normalization,
                        input_shape=self.input_shape)


@functools.lru_cache(maxsize=64)  # one wrapper per shadow, so that compiled inversions are reused
def _pixel_edge(shadow: Pure | SplitModel, normalization: Normalization | None) -> tuple[Pure, Normalization]:
    """The shadow as a `Pure` on images in [0,1], and its normalisation."""
    if isinstance(shadow, SplitModel):
        if normalization is not None:
            raise ValueError("a SplitModel shadow brings its own normalization; pass normalization=None")
        model = shadow
        # the edge layers are a prefix of the network: initialising only them gives the same values
        # as model.edge_variables(model.init(key)) (Sequential folds in the layer index)
        edge_only = Sequential(model.network.layers[:len(model.edge_names)])
        return Pure(edge_only.init,
                    lambda v, x, *, train=False, key=None: model.edge_apply(v, x, train=train, key=key)), \
            model.normalization
    if not isinstance(shadow, Pure):
        raise TypeError(f"expected the shadow edge as a mijax.nn.Pure or a SplitModel, got "
                        f"{type(shadow).__name__}")
    norm = normalization or PIXELS
    return Pure(shadow.init, lambda v, x, *, train=False, key=None: shadow.apply(
        v, norm.normalize(x), train=train, key=key)), norm


@functools.partial(jax.jit, static_argnames=("edge", "normalization", "input_shape"))
def _invert(variables, z, config, *, edge, normalization, input_shape):
    # variables and the (sweepable) rMLE settings are arguments: no constant folding, and one
    # compilation per shadow architecture and shape
    return rmle(TrainedShadow(edge, variables, normalization, input_shape).white_box(), z, config=config)


def _check_knowledge(knowledge) -> None:
    # The type is the guarantee: a QueryFree holds the cloud and shapes, never the edge's variables.
    if not isinstance(knowledge, QueryFree):
        raise TypeError(f"expected QueryFree knowledge (the cloud only; build it with "
                        f"QueryFree.from_model), got {type(knowledge).__name__}")


def train_shadow(knowledge: QueryFree, shadow: Pure | SplitModel, images, labels, *,
                 config: ShadowConfig = ShadowConfig(), key: jax.Array,
                 normalization: Normalization | None = None, workdir: str | pathlib.Path | None = None,
                 checkpoint_every: int | None = None, progress: bool = True, mesh=None) -> TrainedShadow:
    """Step 1: trains a shadow edge through the frozen cloud with cross-entropy (ACSAC 2019 §4.3).

    Args:
        knowledge: the cloud and shapes (`QueryFree.from_model(model, variables)`).
        shadow: the shadow edge: a `SplitModel` (its edge part, freshly initialised; "same net") or
            a `Pure` on normalised images (e.g. `he2019_shadow`; "diff net").
        images: the attacker's `[num, height, width, channels]` in [0,1].
        labels: `[num]` integer labels.
        config: training settings.
        key: PRNG key (initialisation, order, steps).
        normalization: input normalisation of a `Pure` shadow (None: raw pixels).
        workdir, checkpoint_every, progress, mesh: see `mijax.train.fit_loop`.

    Returns:
        The `TrainedShadow`.

    Raises:
        TypeError: `knowledge` is not `QueryFree`, or `shadow` is neither a `Pure` nor a `SplitModel`.
        ValueError: on badly shaped images or labels, or a shadow whose features do not fit the cloud.
    """
    _check_knowledge(knowledge)
    config.validate()
    edge, norm = _pixel_edge(shadow, normalization)
    images, labels = np.asarray(images, np.float32), np.asarray(labels)
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(knowledge.input_shape):
        raise ValueError(f"expected images of shape [num, {', '.join(map(str, knowledge.input_shape))}], "
                         f"got {images.shape}")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"expected integer labels of shape [{len(images)}] matching images, got "
                         f"{labels.dtype} {labels.shape}")
    out = jax.eval_shape(lambda v, x: edge.apply(v, x)[0], jax.eval_shape(edge.init, jax.random.key(0)),
                         jax.ShapeDtypeStruct((1, *knowledge.input_shape), jnp.float32))
    if tuple(out.shape[1:]) != tuple(knowledge.feature_shape):
        raise ValueError(f"expected a shadow edge with features {tuple(knowledge.feature_shape)} (the "
                         f"cloud's input), got {tuple(out.shape[1:])}")
    if not 0 < config.batch_size <= len(images):
        raise ValueError(f"expected config.batch_size in [1, {len(images)}], got {config.batch_size}")
    optimizer = he2019_optimizer(config.learning_rate, eps=config.eps, halve_every=config.halve_every,
                                 legacy_eps=config.legacy_eps,
                                 steps_per_epoch=len(images) // config.batch_size)
    init_key, loop_key = jax.random.split(key)

    def init():
        # the network eagerly (XLA-CPU compiles jitted threefry initialisers very slowly); the optimizer
        # state jitted, so that its zero trees are distinct buffers (the step donates them)
        variables = edge.init(init_key)
        opt_state = jax.jit(optimizer.init)(variables["params"])
        return TrainState(jnp.zeros((), jnp.int32), variables, opt_state, ())

    def step(state: TrainState, x, y, key, cloud: QueryFree):  # the cloud's weights as arguments
        def loss_fn(params):
            z, variables = edge.apply({**state.variables, "params": params}, x, train=True, key=key)
            logits = cloud.cloud(z)
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y)), (variables, logits)

        params, opt_state, loss, (variables, logits) = descend(loss_fn, optimizer, state.variables["params"],
                                                               state.opt_state)
        metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}
        return TrainState(state.step + 1, {**variables, "params": params}, opt_state, ()), metrics

    state = fit_loop(step, init(), (images, labels), step_args=(knowledge,), mesh=mesh,
                     epochs=config.epochs, batch_size=config.batch_size, key=loop_key, workdir=workdir,
                     checkpoint_every=checkpoint_every, progress=progress, description="shadow edge")
    return TrainedShadow(edge, state.variables, norm, tuple(knowledge.input_shape))


def shadow_attack(knowledge: QueryFree | TrainedShadow, z_observed, *,
                  config: ShadowConfig = ShadowConfig(), key: jax.Array | None = None,
                  shadow: Pure | SplitModel | None = None, images=None, labels=None,
                  normalization: Normalization | None = None, workdir: str | pathlib.Path | None = None,
                  progress: bool = True, mesh=None) -> jax.Array:
    """Reconstructs images from observed features without queries or edge weights.

    With `QueryFree` knowledge, trains the shadow (`train_shadow`) and inverts `z_observed` through
    it with rMLE (`config.inversion`); with a `TrainedShadow`, only inverts (pure and jittable; the
    compiled inversion is reused across calls, and traced rMLE settings such as λ_TV can be swept).

    Args:
        knowledge: the cloud and shapes, or an already trained shadow.
        z_observed: `[batch, ...]` the victim's transmitted features z̃.
        config: shadow training and inversion settings.
        key: PRNG key for the shadow's training (required with `QueryFree`).
        shadow, images, labels, normalization, workdir, progress, mesh: see `train_shadow`.

    Returns:
        `x_hat` `[batch, height, width, channels]` in [0,1].

    Raises:
        TypeError: `knowledge` is neither `QueryFree` nor `TrainedShadow`.
        ValueError: missing or mismatched arguments.
    """
    if isinstance(knowledge, TrainedShadow):
        if shadow is not None or images is not None or labels is not None:
            raise ValueError("a TrainedShadow is used as is: pass neither shadow, images nor labels")
        return _invert(knowledge.variables, jnp.asarray(z_observed), config.inversion, edge=knowledge.edge,
                       normalization=knowledge.normalization, input_shape=knowledge.input_shape)
    _check_knowledge(knowledge)
    if shadow is None or images is None or labels is None or key is None:
        raise ValueError("the query-free attack needs shadow, images, labels and key")
    z_observed = jnp.asarray(z_observed)
    if tuple(z_observed.shape[1:]) != tuple(knowledge.feature_shape):
        raise ValueError(f"expected z_observed of shape [batch, {', '.join(map(str, knowledge.feature_shape))}], "
                         f"got {z_observed.shape}")
    trained = train_shadow(knowledge, shadow, images, labels, config=config, key=key,
                           normalization=normalization, workdir=workdir, progress=progress, mesh=mesh)
    return shadow_attack(trained, z_observed, config=config)


# --- He et al.'s "different architecture" shadows (net.py, `*AlternativeXArchi2`) -----------------------


def _c(name, cin, cout, k, padding=0):
    return Layer(name, pure(lambda rngs: Conv2d(cin, cout, k, padding=padding, rngs=rngs)))


_RELU, _POOL = jax.nn.relu, max_pool

HE2019_SHADOWS = {
    ("cifar10", "conv11"): lambda: [_c("conv10", 3, 16, 3, 1), _c("conv11", 16, 64, 3, 1)],
    ("cifar10", "relu22"): lambda: [_c("conv11", 3, 64, 5, 2), Layer("relu11", _RELU), Layer("pool1", _POOL),
                                    _c("conv22", 64, 128, 5, 2), Layer("relu22", _RELU)],
    ("cifar10", "relu32"): lambda: [_c("conv11", 3, 64, 5, 2), Layer("relu11", _RELU), Layer("pool1", _POOL),
                                    _c("conv22", 64, 128, 5, 2), Layer("relu22", _RELU), Layer("pool2", _POOL),
                                    _c("conv32", 128, 128, 5, 2), Layer("relu32", _RELU)],
    ("mnist", "conv1"): lambda: [_c("conv0", 1, 8, 3), _c("conv1", 8, 8, 3)],
    ("mnist", "relu2"): lambda: [_c("conv11", 1, 8, 3), _c("conv12", 8, 16, 3), Layer("pool1", _POOL),
                                 _c("conv21", 16, 16, 3), _c("conv2", 16, 16, 3), Layer("relu2", _RELU)],
}


def he2019_shadow(cut: str, dataset: str) -> Pure:
    """He et al.'s shadow edge of a *different* architecture than the victim's (ACSAC 2019 Table 5).

    E.g. for CIFAR10CNN's relu22 (victim: two 3×3×64 convs, pool, two 3×3×128 convs) the shadow is
    conv5×5×64 → ReLU → pool → conv5×5×128 → ReLU. It acts on normalised images: pass the
    normalisation to `train_shadow`/`shadow_attack` (`normalization=model.normalization`).

    Args:
        cut: "conv11", "relu22", "relu32" (cifar10) or "conv1", "relu2" (mnist).
        dataset: "cifar10" or "mnist".

    Raises:
        ValueError: on a split point without a paper shadow.
    """
    if (dataset, cut) not in HE2019_SHADOWS:
        raise ValueError(f"no He et al. shadow for dataset {dataset!r}, cut {cut!r}; valid: "
                         f"{', '.join(f'{d}/{c}' for d, c in HE2019_SHADOWS)}")
    return Sequential(tuple(HE2019_SHADOWS[dataset, cut]())).as_pure()
