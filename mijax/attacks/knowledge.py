"""What an attacker may see, one type per threat level (He et al. ACSAC 2019, Table 1).

An attack's signature takes exactly one of these, so the type says what it can touch:

- `WhiteBox`: the edge's program and its variables (nothing of the cloud);
- `BlackBox`: a query oracle; its weights travel inside it (so that a jitted attack receives them as
  arguments) but the only way to use them is `query`, which is not differentiable;
- `QueryFree`: the cloud's program and variables (what the server runs) and the shapes, never the edge.

Each is a pytree whose leaves are exactly those arrays and whose static part is a program: a
hashable callable that closes over no arrays (checked), such as `mijax.split.SplitModel`'s halves.
So the types can be passed into `jit`, `vmap` and `lax.scan` like any state, and nothing reaches an
attack through a closure.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import numpy as np

from mijax.data.transforms import Normalization
from mijax.defenses.base import Defense, identity
from mijax.nn import Variables
from mijax.pipeline import transmit
from mijax.split import SplitModel
from mijax.stacks import map_models

PyTree = Any


def _check_program(name: str, program: Callable) -> None:
    """Raises if `program` closes over arrays: those belong in the type's leaves, where the level's
    rules (and jit) see them."""
    if not callable(program):
        raise TypeError(f"expected {name} to be callable, got {type(program).__name__}")
    cells = getattr(program, "__closure__", None) or ()
    if any(isinstance(c.cell_contents, (jax.Array, np.ndarray)) for c in cells
           if c.cell_contents is not None):
        raise ValueError(f"expected {name} to close over no arrays; pass them as the variables/state")


@dataclasses.dataclass(frozen=True)
class EvalProgram:
    """`(variables, x) -> y`: `network.<method>` in eval mode, its first output (e.g. a model's
    `edge_apply` or `cloud_apply`, a `mijax.nn.Pure`'s `apply`); equal for equal networks, so jit
    caches hit."""

    network: Any
    method: str = "apply"

    def __call__(self, variables: Variables, x: jax.Array) -> jax.Array:
        return getattr(self.network, self.method)(variables, x)[0]


@dataclasses.dataclass(frozen=True)
class DeployedEdges:
    """`((edge_variables, defense_state), x, key) -> z̃`: the deployed edge (defense as in eval mode);
    with an axis that is not None, a stack of them returning `[num_models, batch, ...]`."""

    model: SplitModel
    defense: Defense
    variables_axis: int | None = None
    defense_axis: int | None = None

    def __call__(self, state, x, key):
        def one(variables, defense_state):
            return transmit(self.model, variables, x, defense=self.defense, defense_state=defense_state,
                            key=key).z_tilde
        if self.variables_axis is None and self.defense_axis is None:
            return one(*state)
        return map_models(one, (self.variables_axis, self.defense_axis),
                          stacked_weights=self.variables_axis is not None)(*state)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["variables"],
                   meta_fields=["program", "normalization", "input_shape"])
@dataclasses.dataclass(frozen=True, eq=False)
class WhiteBox:
    """The edge `f` with its variables (frozen, eval mode).

    Attributes:
        program: `program(variables, x) -> z`, differentiable in `x`.
        variables: the edge's variables (the pytree's leaves).
        normalization: the edge's input normalisation (attacks may optimise in that space).
        input_shape: `(height, width, channels)`.
    """

    program: Callable
    variables: PyTree
    normalization: Normalization = dataclasses.field(kw_only=True)
    input_shape: tuple[int, int, int] = dataclasses.field(kw_only=True)

    def __post_init__(self):
        _check_program("program", self.program)
        object.__setattr__(self, "input_shape", tuple(self.input_shape))

    def edge(self, x: jax.Array) -> jax.Array:
        """`z = f(x)` for images `x ∈ [0,1]` of shape `[batch, *input_shape]`."""
        return self.program(self.variables, x)

    @classmethod
    def from_model(cls, model: SplitModel, variables: Variables) -> WhiteBox:
        """Hands over only the edge's variables of `variables`."""
        return cls(EvalProgram(model, "edge_apply"), model.edge_variables(variables),
                   normalization=model.normalization, input_shape=model.input_shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _sealed_query(program, state, x, key):
    return program(state, x, key)


def _sealed_forward(program, state, x, key):
    return program(state, x, key), None


def _sealed_backward(program, residuals, cotangent):
    raise TypeError("a black-box query is not differentiable: the attacker sees only its outputs "
                    "(a white-box attack takes a WhiteBox)")


_sealed_query.defvjp(_sealed_forward, _sealed_backward)


@jax.tree_util.register_pytree_node_class
class BlackBox:
    """A query oracle `query(x, key=None) -> z̃` (the deployed edge, defense included); no weights.

    The oracle's arrays (the edge's variables, the defense state) are its pytree leaves, so a jitted
    attack receives them as arguments, but they are reachable only through `query`, whose gradient
    raises (`jax.grad` through a black box is an error, not a white-box attack in disguise).

    Args:
        program: `program(state, x, key) -> z̃`, closing over no arrays.
        state: the oracle's arrays.
        input_shape: `(height, width, channels)` of the queries.
        stochastic: the oracle draws noise per query, so `query` needs a key.
    """

    def __init__(self, program: Callable, *, input_shape: tuple[int, int, int], state: PyTree = (),
                 stochastic: bool = False):
        _check_program("program", program)
        self._program, self._state = program, state
        self.input_shape, self.stochastic = tuple(input_shape), bool(stochastic)

    def query(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """z̃ for queries `x` `[batch, *input_shape]` in [0, 1]; `key` draws a stochastic oracle's noise."""
        if key is None:
            if self.stochastic:
                raise ValueError("expected a key: the defended oracle draws noise per query")
            key = jax.random.key(0)
        return _sealed_query(self._program, self._state, x, key)

    @classmethod
    def from_model(cls, model: SplitModel, variables: Variables, *, defense: Defense | None = None,
                   defense_state: Any = None) -> BlackBox:
        """The deployed edge as an oracle: eval mode, `defense` applied; holds only the edge's variables.

        `defense_state` defaults to `defense.init(key(0), model.defense_spec())`.
        """
        return cls.stacked(model, variables, defense=defense, defense_state=defense_state, variables_axis=None,
                           defense_axis=None)

    @classmethod
    def stacked(cls, model: SplitModel, variables: Variables, *, defense: Defense | None = None,
                defense_state: Any = None, variables_axis: int | None = 0,
                defense_axis: int | None = 0) -> BlackBox:
        """A sweep's deployed edges as one oracle returning `[num_models, batch, ...]`.

        Model `m` is `from_model(model, variables[m], defense=defense, defense_state=defense_state[m])`;
        all draw their noise from the same key (common random numbers).

        Args:
            variables: with a leading model axis (`mijax.train.fit(..., sweep=True)`), or shared
                with `variables_axis=None`.
            defense_state: with a leading model axis (`mijax.defenses.stack`), or shared with
                `defense_axis=None`; None: `defense.init()`, shared.
        """
        defense = defense or identity()
        stacked = variables_axis is not None or defense_axis is not None
        if defense_state is None:
            defense_state, defense_axis = defense.init(jax.random.key(0), model.defense_spec()), None
        if stacked and variables_axis is None and defense_axis is None:
            raise ValueError("expected stacked variables or a stacked defense_state (an axis that is not None)")
        stochastic = defense.feature_transform is not None or defense.input_transform is not None
        return cls(DeployedEdges(model, defense, variables_axis, defense_axis), input_shape=model.input_shape,
                   state=(model.edge_variables(variables), defense_state), stochastic=stochastic)

    def tree_flatten(self):
        return (self._state,), (self._program, self.input_shape, self.stochastic)

    @classmethod
    def tree_unflatten(cls, static, leaves):
        out = object.__new__(cls)
        out._program, out.input_shape, out.stochastic = static
        out._state = leaves[0]
        return out


@functools.partial(jax.tree_util.register_dataclass, data_fields=["variables"],
                   meta_fields=["program", "feature_shape", "input_shape", "num_classes"])
@dataclasses.dataclass(frozen=True, eq=False)
class QueryFree:
    """The cloud part `g` (which the server runs) with its variables, and nothing of the edge.

    Attributes:
        program: `program(variables, z) -> logits`, frozen, eval mode.
        variables: the cloud's variables.
        feature_shape: shape of one `z`.
        input_shape: `(height, width, channels)` of the private images.
        num_classes: outputs of the cloud.
    """

    program: Callable
    variables: PyTree
    feature_shape: tuple[int, ...] = dataclasses.field(kw_only=True)
    input_shape: tuple[int, int, int] = dataclasses.field(kw_only=True)
    num_classes: int = dataclasses.field(kw_only=True)

    def __post_init__(self):
        _check_program("program", self.program)
        for name in ("feature_shape", "input_shape"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def cloud(self, z: jax.Array) -> jax.Array:
        """The logits `g(z)`."""
        return self.program(self.variables, z)

    @classmethod
    def from_model(cls, model: SplitModel, variables: Variables) -> QueryFree:
        """Hands over only the cloud's variables. The model must end in the cloud (no client tail)."""
        if model.tail is not None:
            raise ValueError("expected a model without a client tail: the query-free attack needs the "
                             f"server's part to output the logits, but layers from {model.tail!r} on run on "
                             "the client")
        return cls(EvalProgram(model, "cloud_apply"), model.cloud_variables(variables),
                   feature_shape=model.feature_shape(), input_shape=model.input_shape,
                   num_classes=model.num_classes)
