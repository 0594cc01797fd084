"""What an attacker may see, one type per threat level (He et al. ACSAC 2019, Table 1).

An attack's signature takes exactly one of these, so the type says what it can touch: a white-box
attacker gets the edge function with its weights; a black-box attacker only a query oracle; a
query-free attacker the cloud part and its own data, never the edge.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax

from mijax.data.transforms import Normalization
from mijax.nn import Variables
from mijax.split import SplitModel


class WhiteBox(NamedTuple):
    """The edge `f` with its parameters (frozen, eval mode).

    Attributes:
        edge: `edge(x) -> z` for images `x ∈ [0,1]` of shape `[batch, *input_shape]`, differentiable.
        normalization: the edge's input normalisation (attacks may optimise in that space).
        input_shape: `(height, width, channels)`.
    """

    edge: Callable[[jax.Array], jax.Array]
    normalization: Normalization
    input_shape: tuple[int, int, int]

    @classmethod
    def from_model(cls, model: SplitModel, variables: Variables) -> WhiteBox:
        """Hands over only the edge's variables of `variables`."""
        edge_variables = model.edge_variables(variables)
        return cls(lambda x: model.edge_apply(edge_variables, x)[0], model.normalization,
                   model.input_shape)


class BlackBox(NamedTuple):
    """A query oracle `query(x) -> z̃` (the deployed edge, defense included); no weights.

    A stochastic oracle (a deployed noise defense) also accepts `query(x, key=k)` for its draws.
    """

    query: Callable[[jax.Array], jax.Array]
    input_shape: tuple[int, int, int]

    @classmethod
    def from_model(cls, model: SplitModel, variables: Variables, *, defense=None,
                   defense_state=None) -> BlackBox:
        """The deployed edge as an oracle `query(x, key=None)`: eval mode, `defense` applied.

        Only the edge's variables are closed over. A defense with random draws needs `key`.
        """
        from mijax.train import transmit  # a late import: train depends on nothing in attacks
        from mijax.defenses.base import identity

        edge_variables = model.edge_variables(variables)
        defense = defense or identity()
        state = defense.init() if defense_state is None else defense_state
        stochastic = defense.feature_transform is not None or defense.input_transform is not None

        def query(x, key=None):
            if key is None:
                if stochastic:
                    raise ValueError("expected a key: the defended oracle draws noise per query")
                key = jax.random.key(0)
            return transmit(model, defense, state, edge_variables, x, key, train=False)[2]

        return cls(query, model.input_shape)


class QueryFree(NamedTuple):
    """The cloud part `g` (which the server runs) with its variables, and nothing of the edge.

    Attributes:
        cloud: `cloud(z) -> logits`, frozen, eval mode.
        feature_shape: shape of one `z`.
        input_shape: `(height, width, channels)` of the private images.
        num_classes: outputs of the cloud.
    """

    cloud: Callable[[jax.Array], jax.Array]
    feature_shape: tuple[int, ...]
    input_shape: tuple[int, int, int]
    num_classes: int

    @classmethod
    def from_model(cls, model: SplitModel, variables: Variables) -> QueryFree:
        cloud_variables = model.cloud_variables(variables)
        return cls(lambda z: model.cloud_apply(cloud_variables, z)[0], model.feature_shape(),
                   model.input_shape, model.num_classes)
