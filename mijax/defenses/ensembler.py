"""Ensembler: a secret selective ensemble of server members (Liu et al., arXiv 2401.10859; `ensembler.md`).

Deployment (v1 reviews: "the client holds the first and last few layers"):

    client  z̃ = f(x) + σε                      (fresh ε per query)
    server  g_1(z̃) … g_N(z̃)                    (all N members, returned to the client)
    client  ŷ = t( Σ_i w_i g_i(z̃) )            (w: the secret selector, P of its N weights non-zero)

Training, three stages (the paper's Eq. 1 and Eq. 3 were not read; every piece below that the spec
marks [unverified] is a field of `EnsemblerConfig` with the documented default):

1. `train_members`: N complete networks (head_i, body_i, tail_i) with different seeds and a fixed
   per-member perturbation δ_i at the cut ("intentionally biased ... by adding a fixed perturbation
   to its input"), plus the deployment noise: z̃_i = head_i(x) + δ_i + σε. All N are one program
   (`mijax.train.fit(..., sweep=True)` over stacked variables and perturbation states).
2. `train_private` (stage 2): the bodies are frozen; a fresh private head f, the selector and a
   fresh tail t are trained with

       L = CE(t(Σ_i w_i g_i(f(x) + σε)), y) + λ_sel · R_P(w) + λ_cos · (1/B) Σ_b Σ_{i∈T} c(cos(f(x_b), head_i(x_b)))

   where R_P (`selection_penalty`) is the selector's weight outside its P largest ("a regularisation
   term encouraging it to utilise P of these middle layers"), head_i are the stage-1 heads (the
   "shadow" heads an attacker could recover), T the cosine targets and c the cosine form
   (`shadow_cosine`). After stage 2 the selector is hardened to its top P (`harden`).
3. `train_private` (stage 3): joint fine-tuning with the hardened (P-sparse) selector, the bodies
   optionally trained too.

The bodies always run with their stage-1 BatchNorm statistics (eval mode) in stages 2 and 3, so the
two stages are one compiled program whose stage-specific settings are data (`PrivateSettings`), and
a sweep over (N, P) or σ stacks those settings (`train_private(..., sweep=True)`).
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
from flax import nnx

from mijax import data
from mijax.defenses.base import Defense, check_scalar, require_spec, stack
from mijax.nn import Pure, Sequential, Variables, pure
from mijax.split import SplitModel
from mijax.stacks import map_models
from mijax.train import TrainState, fit, fit_loop

WEIGHTINGS = ("softmax", "sigmoid")
COS_FORMS = ("signed", "abs", "relu")
COS_TARGETS = ("all", "unselected")
COS_ON = ("features", "selector")
PERTURBATIONS = ("gaussian", "uniform", "none")
SELECTIONS = ("learned", "random")


# --- the selector -----------------------------------------------------------------------------------


def selector_weights(logits: jax.Array, mask: jax.Array, *, weighting: str = "softmax") -> jax.Array:
    """The selector's weights `w` [N] from its logits and its {0,1} mask (zero outside the mask).

    "softmax": w_i = m_i e^{l_i} / Σ_j m_j e^{l_j} (a convex combination of the selected members);
    "sigmoid": w_i = m_i σ(l_i) (independent gates: the paper's Eq. 1 calls S_i "an activation").
    Which one the paper uses is [unverified].
    """
    if weighting == "softmax":
        masked = jnp.where(mask > 0, logits, -jnp.inf)
        top = jax.lax.stop_gradient(jnp.max(masked))
        e = jnp.where(mask > 0, jnp.exp(logits - top), 0.0)
        return e / jnp.sum(e)
    if weighting == "sigmoid":
        return mask * jax.nn.sigmoid(logits)
    raise ValueError(f"expected weighting in {WEIGHTINGS}, got {weighting!r}")


class SparseSelector(nnx.Module):
    """The client's secret combiner `[members, batch, ...] -> [batch, ...]`: Σ_i w_i x_i.

    Parameters: `logits` [N] (initialised N(0, init_scale²) from the client's key, so that ties are
    broken by a secret draw). State: `mask` [N] in {0, 1}, kept in the `batch_stats` collection (no
    optimiser touches it); all ones until `harden` keeps the top P.
    """

    def __init__(self, members: int, *, weighting: str, init_scale: float, rngs: nnx.Rngs):
        self.weighting = weighting
        self.logits = nnx.Param(init_scale * jax.random.normal(rngs.params(), (members,)))
        self.mask = nnx.BatchStat(jnp.ones((members,)))

    def __call__(self, x, *, train=False, key=None):
        if x.shape[0] != self.logits.shape[0]:
            raise ValueError(f"expected [{self.logits.shape[0]}, batch, ...] member outputs, got {x.shape}")
        return jnp.tensordot(selector_weights(self.logits[...], self.mask[...], weighting=self.weighting), x,
                             axes=1)


@functools.cache
def sparse_selector(members: int, *, weighting: str = "softmax", init_scale: float = 0.1) -> Pure:
    """A `SparseSelector` as a `Pure` layer (the `combine` layer of `mijax.models.resnet18`)."""
    if members < 1:
        raise ValueError(f"expected members >= 1, got {members}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"expected weighting in {WEIGHTINGS}, got {weighting!r}")
    return pure(lambda rngs: SparseSelector(members, weighting=weighting, init_scale=init_scale, rngs=rngs))


def top_mask(scores: jax.Array, available: jax.Array, selected) -> jax.Array:
    """{0,1} mask of the `selected` (P, may be traced) largest `scores` among the `available` members."""
    masked = jnp.where(available > 0, scores, -jnp.inf)
    rank = jnp.argsort(jnp.argsort(-masked))  # 0 for the largest; ties broken by index
    return ((rank < selected) & (available > 0)).astype(jnp.float32)


def selection_penalty(weights: jax.Array, selected) -> jax.Array:
    """R_P(w): the share of |w| outside its P largest entries (0 iff w is P-sparse) [unverified form]."""
    magnitude = jnp.abs(weights)
    keep = top_mask(jax.lax.stop_gradient(magnitude), jnp.ones_like(magnitude), selected)
    return jnp.sum((1.0 - keep) * magnitude) / (jnp.sum(magnitude) + 1e-12)


def harden(variables: Variables, selected, *, name: str = "combine") -> Variables:
    """`variables` with the selector's mask set to its top-`selected` logits among the current mask:
    afterwards exactly P weights are non-zero (the deployed, P-sparse selector)."""
    logits = variables["params"][name]["logits"]
    mask = variables["batch_stats"][name]["mask"]
    new = top_mask(logits, mask, selected)
    stats = {**variables["batch_stats"], name: {**variables["batch_stats"][name], "mask": new}}
    return {**variables, "batch_stats": stats}


def deployed_weights(variables: Variables, *, weighting: str = "softmax", name: str = "combine") -> jax.Array:
    """The selector's weights as deployed (`selector_weights` of its logits and mask)."""
    return selector_weights(variables["params"][name]["logits"], variables["batch_stats"][name]["mask"],
                            weighting=weighting)


# --- the cosine term ----------------------------------------------------------------------------------


def shadow_cosine(z: jax.Array, shadow_features: jax.Array, *, form: str = "signed",
                  targets: jax.Array | None = None, eps: float = 1e-8) -> jax.Array:
    """Per-example cosine penalty Σ_{i∈T} c(cos(vec z_b, vec head_i(x_b))) (`ensembler.md`, stage 2).

    Args:
        z: the new head's clean features `[batch, ...]`.
        shadow_features: the stage-1 heads' features `[N, batch, ...]` (no gradient flows into them).
        form: c: "signed" (cos), "abs" (|cos|) or "relu" (max(0, cos)) [unverified].
        targets: `[N]` weights of the heads that enter (1: in T); None: all N.
        eps: added to the norms' product.

    Returns:
        `[batch]` values.
    """
    if form not in COS_FORMS:
        raise ValueError(f"expected form in {COS_FORMS}, got {form!r}")
    a = z.reshape(z.shape[0], -1)
    b = jax.lax.stop_gradient(shadow_features).reshape(shadow_features.shape[0], z.shape[0], -1)
    cos = jnp.sum(a[None] * b, -1) / (jnp.linalg.norm(a, axis=-1)[None] * jnp.linalg.norm(b, axis=-1) + eps)
    c = {"signed": cos, "abs": jnp.abs(cos), "relu": jax.nn.relu(cos)}[form]
    t = jnp.ones(shadow_features.shape[0]) if targets is None else targets
    return jnp.tensordot(t, c, axes=1)


# --- stage 1: member perturbation and noise -----------------------------------------------------------


def member_perturbation(*, sigma, scale, kind: str = "gaussian") -> Defense:
    """Stage 1's transform for member i: z̃ = z + δ_i + σε (a fixed δ_i, fresh ε per call).

    δ_i is drawn once in `init(key, spec)` with the feature shape: "gaussian" N(0, scale²), "uniform"
    U(−scale, scale), "none" 0 (the kind and scale are [unverified]). The state also holds the member's
    index, folded into the noise key, so stacked members draw independent noise from one step key.
    Build the N members' states with `member_states`.

    Args:
        sigma: the deployment noise std (traced).
        scale: the perturbation's scale (traced).
        kind: "gaussian", "uniform" or "none".
    """
    if kind not in PERTURBATIONS:
        raise ValueError(f"expected kind in {PERTURBATIONS}, got {kind!r}")
    sigma, scale = check_scalar("sigma", sigma), check_scalar("scale", scale)
    try:  # concrete settings: one Defense per (σ, scale, kind), so compiled training steps are reused
        return _member_perturbation(float(sigma), float(scale), kind)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return _member_perturbation.__wrapped__(sigma, scale, kind)


@functools.cache
def _member_perturbation(sigma, scale, kind: str) -> Defense:
    def init(key=None, spec=None):
        spec = require_spec("member_perturbation", spec)
        key = jax.random.key(0) if key is None else key
        shape = tuple(spec.feature_shape)
        unit = {"gaussian": lambda: jax.random.normal(key, shape),
                "uniform": lambda: jax.random.uniform(key, shape, minval=-1.0, maxval=1.0),
                "none": lambda: jnp.zeros(shape)}[kind]()
        return {"delta": scale * unit, "sigma": sigma, "member": jnp.zeros((), jnp.int32)}

    def transform(state, z, key, *, train):
        noise = jax.random.normal(jax.random.fold_in(key, state["member"]), z.shape)
        return z + state["delta"] + state["sigma"] * noise

    return Defense(init=init, feature_transform=transform)


def member_states(defense: Defense, key: jax.Array, spec, members: int):
    """The stacked states of `members` perturbations: member m's δ from `fold_in(key, m)`, index m."""
    return stack([{**defense.init(jax.random.fold_in(key, m), spec), "member": jnp.asarray(m, jnp.int32)}
                  for m in range(members)])


# --- configuration --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class EnsemblerConfig:
    """Ensembler's settings; everything but N, P and σ is [unverified] (no code, text not read).

    Attributes:
        members: N, server members (required; a recollection puts the paper's near 10).
        selected: P, members the secret selector uses (required).
        sigma: σ, Gaussian noise std at the cut, in every stage and at inference.
        perturbation: kind of stage 1's fixed per-member perturbation ("gaussian", "uniform", "none").
        perturbation_scale: its scale.
        selection: "learned" (stage 2 learns the weights of all N with the P-penalty, then the top P
            are kept) or "random" (the client draws a secret P-subset before stage 2).
        weighting: selector weights, "softmax" (convex combination) or "sigmoid" (gates).
        selection_weight: λ_sel of the P-penalty `selection_penalty`.
        cos_weight: λ_cos of the cosine term.
        cos_form: "signed", "abs" or "relu" (`shadow_cosine`).
        cos_targets: "all" N stage-1 heads, or only the "unselected" ones.
        cos_on: "features" (new head vs stage-1 heads, default) or "selector" (cosine between the
            selector's weights and the uniform guess 1/N, the other reading of v2's summary).
        finetune_bodies: stage 3 also trains the server members (their BatchNorm statistics stay).
        stage1_epochs, stage2_epochs, stage3_epochs: epochs per stage.
        batch_size: examples per step in every stage.
        learning_rate: Adam step size of stage 1 and 2; stage 3 uses `finetune_learning_rate`.
        augment: random flips and 4-pixel crops during training (CIFAR).
    """

    members: int
    selected: int
    sigma: float = 0.5
    perturbation: str = "gaussian"
    perturbation_scale: float = 0.5
    selection: str = "learned"
    weighting: str = "softmax"
    selection_weight: float = 1.0
    cos_weight: float = 1.0
    cos_form: str = "signed"
    cos_targets: str = "all"
    cos_on: str = "features"
    finetune_bodies: bool = True
    stage1_epochs: int = 10
    stage2_epochs: int = 10
    stage3_epochs: int = 5
    batch_size: int = 128
    learning_rate: float = 1e-3
    finetune_learning_rate: float = 3e-4
    augment: bool = True

    def validate(self) -> None:
        if not 1 <= self.selected <= self.members:
            raise ValueError(f"expected 1 <= selected <= members, got selected={self.selected}, "
                             f"members={self.members}")
        for name, valid in (("perturbation", PERTURBATIONS), ("selection", SELECTIONS),
                            ("weighting", WEIGHTINGS), ("cos_form", COS_FORMS), ("cos_targets", COS_TARGETS),
                            ("cos_on", COS_ON)):
            if getattr(self, name) not in valid:
                raise ValueError(f"expected {name} in {valid}, got {getattr(self, name)!r}")
        for name in ("sigma", "perturbation_scale", "selection_weight", "cos_weight"):
            check_scalar(name, getattr(self, name))
        for name in ("stage1_epochs", "stage2_epochs", "stage3_epochs", "batch_size"):
            if getattr(self, name) < 0 or (name == "batch_size" and self.batch_size < 1):
                raise ValueError(f"expected {name} >= {1 if name == 'batch_size' else 0}, got {getattr(self, name)}")


def cifar_augment(key, images):
    """Random horizontal flips and 4-pixel random crops (the usual CIFAR ResNet training)."""
    return data.random_crop(key, data.random_flip(jax.random.fold_in(key, 1), images), padding=4)


# --- stage 1 ----------------------------------------------------------------------------------------------


def init_members(model: SplitModel, key: jax.Array, members: int) -> Variables:
    """`members` complete networks' variables stacked on a leading axis, member m from `fold_in(key, m)`."""
    return jax.vmap(lambda m: model.init(jax.random.fold_in(key, m)))(jnp.arange(members))


def train_members(model: SplitModel, images, labels, *, config: EnsemblerConfig, key: jax.Array,
                  workdir: str | pathlib.Path | None = None, progress: bool = True, mesh=None) -> TrainState:
    """Stage 1: N complete networks (`model`: one member, e.g. `resnet18(width=w)`) as one program.

    Member m starts from `fold_in(init_key, m)` and sees z̃ = head_m(x) + δ_m + σε
    (`member_perturbation`); all share the data order (`mijax.train.fit(..., sweep=True)`).

    Returns:
        The stacked `TrainState` (variables with a leading member axis).
    """
    config.validate()
    if model.members != 1:
        raise ValueError(f"expected a one-member model for stage 1 (the complete networks), got members="
                         f"{model.members}")
    init_key, delta_key, fit_key = jax.random.split(key, 3)
    defense = member_perturbation(sigma=config.sigma, scale=config.perturbation_scale, kind=config.perturbation)
    states = member_states(defense, delta_key, model.defense_spec(), config.members)
    return fit(model, images, labels, optimizer=optax.adam(config.learning_rate), epochs=config.stage1_epochs,
               batch_size=config.batch_size, key=fit_key, defense=defense, defense_state=states, sweep=True,
               variables=init_members(model, init_key, config.members),
               augment=cifar_augment if config.augment else None, workdir=workdir, progress=progress,
               description="ensembler stage 1 (N members)", mesh=mesh)


def ensembler_model(member_model: SplitModel, config: EnsemblerConfig) -> SplitModel:
    """The deployed network: `member_model`'s layers with a `combine` selector before its tail."""
    layers = list(member_model.network.layers)
    tail = member_model.network.index(member_model.tail)
    selector = sparse_selector(config.members, weighting=config.weighting)
    network = Sequential(tuple(layers[:tail]) + ((type(layers[0])("combine", selector)),) + tuple(layers[tail:]))
    return dataclasses.replace(member_model, network=network, tail="combine", members=config.members)


def assemble(model: SplitModel, member_variables: Variables, key: jax.Array, *,
             mask: jax.Array | None = None) -> Variables:
    """The deployed variables: a fresh head, selector and tail (from `key`) around the stage-1 bodies.

    Args:
        model: the `ensembler_model`.
        member_variables: stage 1's stacked variables (their cloud layers become the members).
        key: the client's secret key (head, tail and selector initialisation).
        mask: the selector's initial mask `[N]` (None: all ones).
    """
    fresh = model.network.init(key)
    cloud = model.cloud_variables(member_variables)
    variables = {group: {**fresh[group], **cloud[group]} for group in fresh}
    if mask is not None:
        variables["batch_stats"]["combine"] = {"mask": jnp.asarray(mask, jnp.float32)}
    return variables


def shadow_heads(member_model: SplitModel, member_variables: Variables) -> Variables:
    """The stage-1 heads' variables `[N, ...]` (the client's; what an attacker may try to recover)."""
    return member_model.edge_variables(member_variables)


# --- stages 2 and 3 -----------------------------------------------------------------------------------------


class PrivateSettings(NamedTuple):
    """The per-run settings of stages 2 and 3 (data of the compiled step, stackable for sweeps).

    Attributes:
        sigma: deployment noise std.
        selected: P (int).
        selection_weight: λ_sel (0 in stage 3: the mask is already P-sparse).
        cos_weight: λ_cos.
        train_bodies: 1.0 to update the server members, 0.0 to keep them frozen.
        available: `[N]` members this run may use (a (N, P) sweep uses the first N of the stack).
    """

    sigma: Any
    selected: Any
    selection_weight: Any
    cos_weight: Any
    train_bodies: Any
    available: Any


def private_settings(config: EnsemblerConfig, *, stage: int, members: int | None = None,
                     selected: int | None = None, sigma: float | None = None) -> PrivateSettings:
    """Stage 2 or 3 settings from `config` (members/selected/sigma override it, e.g. for a sweep)."""
    if stage not in (2, 3):
        raise ValueError(f"expected stage 2 or 3, got {stage}")
    n = config.members if members is None else members
    available = (jnp.arange(config.members) < n).astype(jnp.float32)
    return PrivateSettings(jnp.float32(config.sigma if sigma is None else sigma),
                           jnp.int32(config.selected if selected is None else selected),
                           jnp.float32(config.selection_weight if stage == 2 else 0.0),
                           jnp.float32(config.cos_weight),
                           jnp.float32(1.0 if stage == 3 and config.finetune_bodies else 0.0), available)


@functools.cache
def _adam(learning_rate: float) -> optax.GradientTransformation:
    return optax.adam(learning_rate)  # one object per step size: compiled steps are reused


@functools.cache
def _private_step(model: SplitModel, head_model: SplitModel, optimizer, cos_form: str, cos_targets: str,
                  cos_on: str, weighting: str, augment: bool, sweep: bool = False):
    body_names = model.cloud_names

    def step(state: TrainState, images, labels, key, shadows, settings: PrivateSettings):
        augment_key, noise_key, key = jax.random.split(key, 3)
        if augment:
            images = cifar_augment(augment_key, images)

        def loss_fn(params):
            variables = {**state.variables, "params": params}
            z, variables = model.edge_apply(variables, images, train=True, key=key)
            z_tilde = z + settings.sigma * jax.random.normal(noise_key, z.shape)
            out, _ = model.cloud_apply(variables, z_tilde, train=False)  # stage-1 BN statistics
            logits, variables, _ = model.tail_apply(variables, out, train=True, key=key)
            task = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
            mask = variables["batch_stats"]["combine"]["mask"]
            weights = selector_weights(params["combine"]["logits"], mask, weighting=weighting)
            penalty = selection_penalty(weights, settings.selected)
            if cos_on == "features":
                shadow_z = map_models(lambda v: head_model.edge_apply(v, images)[0], (0,))(shadows)
                targets = settings.available
                if cos_targets == "unselected":  # the heads of the members outside the current top P
                    chosen = top_mask(jax.lax.stop_gradient(weights), settings.available * mask, settings.selected)
                    targets = targets * (1.0 - chosen)
                cosine = jnp.mean(shadow_cosine(z, shadow_z, form=cos_form, targets=targets))
            else:
                uniform = settings.available / jnp.sum(settings.available)
                cosine = jnp.dot(weights, uniform) / (jnp.linalg.norm(weights) * jnp.linalg.norm(uniform) + 1e-8)
            loss = task + settings.selection_weight * penalty + settings.cos_weight * cosine
            return loss, (variables, logits, task, penalty, cosine)

        (loss, (variables, logits, task, penalty, cosine)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(state.variables["params"])
        grads = {name: jax.tree.map(lambda g: g * settings.train_bodies, g_) if name in body_names else g_
                 for name, g_ in grads.items()}
        updates, opt_state = optimizer.update(grads, state.opt_state, state.variables["params"])
        params = optax.apply_updates(state.variables["params"], updates)
        metrics = {"loss": loss, "task_loss": task, "selection_penalty": penalty, "cosine": cosine,
                   "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
        return TrainState(state.step + 1, {**variables, "params": params}, opt_state, ()), metrics

    return map_models(step, (0, None, None, None, None, 0)) if sweep else step


def train_private(model: SplitModel, head_model: SplitModel, variables: Variables, shadows: Variables,
                  images, labels, *, config: EnsemblerConfig, settings: PrivateSettings, epochs: int,
                  learning_rate: float, key: jax.Array, sweep: bool = False,
                  workdir: str | pathlib.Path | None = None, progress: bool = True, description: str = "",
                  mesh=None) -> TrainState:
    """Stage 2 or 3: trains the private head, selector and tail (and in stage 3 optionally the bodies).

    Args:
        model: the `ensembler_model`.
        head_model: the one-member model of stage 1 (its edge runs the shadow heads).
        variables: the start (`assemble` for stage 2; stage 2's hardened result for stage 3), with a
            leading run axis if `sweep`.
        shadows: the stage-1 heads `[N, ...]` (`shadow_heads`), shared by all runs.
        images, labels: training data.
        config: the static choices (cosine form/targets/on, weighting, augmentation, batch size).
        settings: `private_settings(config, stage=...)`, stacked (`mijax.defenses.stack`) if `sweep`.
        epochs, learning_rate: this stage's (Adam).
        key: batch order and per-step keys.
        sweep: train a stack of runs (one per settings entry) as one program.
        workdir, progress, description, mesh: see `mijax.train.fit_loop`.

    Returns:
        The final `TrainState`.
    """
    config.validate()
    optimizer = _adam(float(learning_rate))
    step = _private_step(model, head_model, optimizer, config.cos_form, config.cos_targets, config.cos_on,
                         config.weighting, config.augment, sweep)
    init = jax.jit(lambda v: TrainState(jnp.zeros((), jnp.int32), v, optimizer.init(v["params"]), ()))
    if sweep:
        init = jax.jit(jax.vmap(lambda v: TrainState(jnp.zeros((), jnp.int32), v, optimizer.init(v["params"]), ())))
    images, labels = np.asarray(images), np.asarray(labels)
    return fit_loop(step, init(variables), (images, labels), step_args=(shadows, settings), epochs=epochs,
                    batch_size=config.batch_size, key=key, workdir=workdir, progress=progress,
                    description=description or "ensembler private stage", mesh=mesh, stacked=sweep)


class Trained(NamedTuple):
    """An Ensembler after its three stages.

    Attributes:
        model: the deployed `ensembler_model`.
        member_model: the one-member network of stage 1.
        variables: the deployed variables (private head, N members, P-sparse selector, tail).
        member_variables: stage 1's stacked complete networks.
    """

    model: SplitModel
    member_model: SplitModel
    variables: Variables
    member_variables: Variables


def train_ensembler(member_model: SplitModel, images, labels, *, config: EnsemblerConfig, key: jax.Array,
                    workdir: str | pathlib.Path | None = None, progress: bool = True, mesh=None) -> Trained:
    """The three stages (`train_members`, `train_private` twice with `harden` between); checkpointed per
    stage under `workdir/stage{1,2,3}` (a rerun resumes).

    The client's secret (the fresh head, the selector's initialisation and, with `selection="random"`,
    the subset) comes from `fold_in(key, 2)`.
    """
    config.validate()
    workdir = None if workdir is None else pathlib.Path(workdir)
    sub = (lambda name: None) if workdir is None else (lambda name: workdir / name)
    stage1 = train_members(member_model, images, labels, config=config, key=jax.random.fold_in(key, 1),
                           workdir=sub("stage1"), progress=progress, mesh=mesh)
    model = ensembler_model(member_model, config)
    secret = jax.random.fold_in(key, 2)
    mask = None
    if config.selection == "random":
        mask = top_mask(jax.random.uniform(jax.random.fold_in(secret, 1), (config.members,)),
                        jnp.ones(config.members), config.selected)
    variables = assemble(model, stage1.variables, secret, mask=mask)
    shadows = shadow_heads(member_model, stage1.variables)
    for stage, epochs, learning_rate in ((2, config.stage2_epochs, config.learning_rate),
                                         (3, config.stage3_epochs, config.finetune_learning_rate)):
        if stage == 3:  # the selector is made P-sparse before the joint fine-tuning
            variables = harden(variables, config.selected)
        if epochs:
            variables = train_private(model, member_model, variables, shadows, images, labels, config=config,
                                      settings=private_settings(config, stage=stage), epochs=epochs,
                                      learning_rate=learning_rate, key=jax.random.fold_in(key, stage + 1),
                                      workdir=sub(f"stage{stage}"), progress=progress,
                                      description=f"ensembler stage {stage}", mesh=mesh).variables
    return Trained(model, member_model, variables, stage1.variables)


@functools.partial(jax.jit, static_argnames="model")
def deployed_logits(model: SplitModel, variables: Variables, images, *, sigma, key: jax.Array) -> jax.Array:
    """Client + server + client in eval mode: `t(Σ_i w_i g_i(f(x) + σε))` (jitted; `model` static)."""
    z, _ = model.edge_apply(variables, images)
    z_tilde = z + sigma * jax.random.normal(key, z.shape)
    out, _ = model.cloud_apply(variables, z_tilde)
    return model.tail_apply(variables, out)[0]


@functools.partial(jax.jit, static_argnames="model")
def transmit_features(model: SplitModel, variables: Variables, images, *, sigma, key: jax.Array) -> jax.Array:
    """What the client sends: `z̃ = f(x) + σε` (eval mode; jitted, `model` static)."""
    z, _ = model.edge_apply(variables, images)
    return z + sigma * jax.random.normal(key, z.shape)
