"""SplitModel: one network cut into an edge part `f` and a cloud part `g` at a named layer.

The edge normalises the private image `x ∈ [0,1]` and computes `z = f(x)`; the cloud computes the
logits `g(z̃)` from the transmitted feature `z̃ = T(z)` of a defense `T` (see `mijax.defenses`).
Attacks and defenses take the cut as a parameter; `with_cut` moves it without retraining, because
the variables of the whole network are keyed by layer name.
"""

from __future__ import annotations

import dataclasses
import functools

import jax

from mijax.data.transforms import Normalization
from mijax.nn import Sequential, Variables


@dataclasses.dataclass(frozen=True)
class SplitModel:
    """A network with a cut point.

    Attributes:
        network: the whole network as named layers.
        cut: the name of the last edge layer (the edge output is `z`).
        normalization: per-channel input normalisation applied by the edge to `x ∈ [0,1]`.
        input_shape: `(height, width, channels)` of `x`.
        num_classes: number of output classes.
        cuts: the cut names the model's paper uses (all layer names are valid cuts).

    Example:
        >>> model = mijax.models.digits_cnn(cut="conv2")
        >>> variables = model.init(jax.random.key(0))
        >>> z, _ = model.edge_apply(variables, x)          # x: [batch, 32, 32, 1] in [0, 1]
        >>> logits, _ = model.cloud_apply(variables, z)
    """

    network: Sequential
    cut: str
    normalization: Normalization
    input_shape: tuple[int, int, int]
    num_classes: int
    cuts: tuple[str, ...] = ()

    def __post_init__(self):
        if self.cut not in self.network.names[:-1]:
            raise ValueError(
                f"unknown cut {self.cut!r}; valid cuts: {', '.join(self.network.names[:-1])}")

    @property
    def edge_names(self) -> tuple[str, ...]:
        return self.network.names[: self.network.index(self.cut) + 1]

    @property
    def cloud_names(self) -> tuple[str, ...]:
        return self.network.names[self.network.index(self.cut) + 1:]

    def with_cut(self, cut: str) -> SplitModel:
        """The same network cut at another layer."""
        return dataclasses.replace(self, cut=cut)

    def init(self, key: jax.Array) -> Variables:
        """Variables of the whole network (edge and cloud)."""
        return self.network.init(key)

    def edge_variables(self, variables: Variables) -> Variables:
        """Only the edge's variables: what a white-box attacker is given."""
        return self.network.subset(variables, self.edge_names)

    def cloud_variables(self, variables: Variables) -> Variables:
        """Only the cloud's variables: what the server (and a query-free attacker) holds."""
        return self.network.subset(variables, self.cloud_names)

    def check_images(self, x) -> None:
        """Raises `ValueError` unless `x` has shape `[batch, *input_shape]`."""
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ValueError(f"expected x of shape [batch, {', '.join(map(str, self.input_shape))}], "
                             f"got {tuple(x.shape)}")

    def edge_apply(self, variables: Variables, x: jax.Array, *, train: bool = False,
                   key: jax.Array | None = None) -> tuple[jax.Array, Variables]:
        """`z = f(x)` for images `x` in [0,1] of shape `[batch, *input_shape]`."""
        self.check_images(x)
        return self.network.apply(variables, self.normalization.normalize(x), train=train, key=key,
                                  stop=self.cut)

    def cloud_apply(self, variables: Variables, z: jax.Array, *, train: bool = False,
                    key: jax.Array | None = None) -> tuple[jax.Array, Variables]:
        """Logits `g(z)` of the transmitted features `z` `[batch, *feature_shape()]`."""
        if z.ndim < 1 or tuple(z.shape[1:]) != self.feature_shape():
            raise ValueError(f"expected z of shape [batch, {', '.join(map(str, self.feature_shape()))}] "
                             f"(the output of the edge cut at {self.cut!r}), got {tuple(z.shape)}")
        return self.network.apply(variables, z, train=train, key=key, start=self.cloud_names[0])

    def forward(self, variables: Variables, x: jax.Array, *, train: bool = False,
                key: jax.Array | None = None) -> tuple[jax.Array, Variables]:
        """Logits `g(f(x))` without a defense."""
        z, variables = self.edge_apply(variables, x, train=train, key=key)
        return self.cloud_apply(variables, z, train=train, key=key)

    def feature_shape(self) -> tuple[int, ...]:
        """Shape of `z` for one image, found by abstract evaluation (once per model)."""
        return _feature_shape(self)


@functools.lru_cache(maxsize=256)
def _feature_shape(model: SplitModel) -> tuple[int, ...]:
    x = jax.ShapeDtypeStruct((1, *model.input_shape), "float32")
    out = jax.eval_shape(lambda v, x: model.edge_apply(v, x)[0], jax.eval_shape(model.init, jax.random.key(0)), x)
    return tuple(out.shape[1:])
