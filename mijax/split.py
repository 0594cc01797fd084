"""SplitModel: one network cut into an edge part `f`, a cloud part `g` and an optional client tail `h`.

The edge normalises the private image `x ∈ [0,1]` and computes `z = f(x)`; the cloud computes
`g(z̃)` from the transmitted feature `z̃ = T(z)` of a defense `T` (see `mijax.defenses`); the client's
tail, when there is one, turns the cloud's output into the logits `h(g(z̃))` (Ensembler's client keeps
the first and the last layers). The cloud may be a stack of `members` networks with stacked
variables, run as one program (`mijax.stacks.map_models`), whose outputs `[members, batch, ...]` the
tail's first layer combines (for example with a selector the client keeps secret).
Attacks and defenses take the cut as a parameter; `with_cut` moves it without retraining, because
the variables of the whole network are keyed by layer name.
"""

from __future__ import annotations

import dataclasses
import functools

import jax

from mijax.data.transforms import Normalization
from mijax.defenses.base import DefenseSpec
from mijax.nn import Sequential, Variables
from mijax.stacks import map_models


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
        tail: the first layer of the client's tail (None: the cloud outputs the logits).
        members: cloud members with stacked variables (> 1 needs a tail whose first layer takes
            `[members, batch, ...]`, e.g. `mijax.nn.member_selector`).

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
    tail: str | None = None
    members: int = 1

    def __post_init__(self):
        names = self.network.names
        if self.cut not in names[:-1]:
            raise ValueError(f"unknown cut {self.cut!r}; valid cuts: {', '.join(names[:-1])}")
        if self.tail is not None and self.tail not in names[names.index(self.cut) + 2:]:
            raise ValueError(f"expected tail to name a layer after the first cloud layer, one of "
                             f"{', '.join(names[names.index(self.cut) + 2:])}; got {self.tail!r}")
        if self.members < 1 or (self.members > 1 and self.tail is None):
            raise ValueError(f"expected members >= 1, and a client tail to combine members > 1, got "
                             f"members={self.members}, tail={self.tail!r}")

    @property
    def edge_names(self) -> tuple[str, ...]:
        return self.network.names[: self.network.index(self.cut) + 1]

    @property
    def cloud_names(self) -> tuple[str, ...]:
        end = None if self.tail is None else self.network.index(self.tail)
        return self.network.names[self.network.index(self.cut) + 1:end]

    @property
    def tail_names(self) -> tuple[str, ...]:
        return () if self.tail is None else self.network.names[self.network.index(self.tail):]

    def with_cut(self, cut: str) -> SplitModel:
        """The same network cut at another layer."""
        return dataclasses.replace(self, cut=cut)

    def init(self, key: jax.Array) -> Variables:
        """Variables of the whole network; with `members > 1` the cloud layers' variables carry a
        member axis (member m initialised from `fold_in(key, m)`)."""
        variables = self.network.init(key)
        if self.members == 1:
            return variables
        stacked = jax.vmap(lambda k: self.cloud_variables(self.network.init(k)))(
            jax.vmap(lambda m: jax.random.fold_in(key, m))(jax.numpy.arange(self.members)))
        return {group: {**tree, **stacked[group]} for group, tree in variables.items()}

    def edge_variables(self, variables: Variables) -> Variables:
        """Only the edge's variables: what a white-box attacker is given."""
        return self.network.subset(variables, self.edge_names)

    def cloud_variables(self, variables: Variables) -> Variables:
        """Only the cloud's variables: what the server (and a query-free attacker) holds."""
        return self.network.subset(variables, self.cloud_names)

    def tail_variables(self, variables: Variables) -> Variables:
        """Only the client tail's variables (the combiner and the last layers): kept by the client."""
        return self.network.subset(variables, self.tail_names)

    def defense_spec(self, *, examples_per_epoch: int | None = None, sample=None) -> DefenseSpec:
        """What `Defense.init(key, spec)` needs to know about this model (and the run's data)."""
        return DefenseSpec(tuple(self.input_shape), self.feature_shape(), self.num_classes, examples_per_epoch,
                           sample, self.normalization)

    def check_images(self, x) -> None:
        """Raises `ValueError` unless `x` has shape `[batch, *input_shape]`."""
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ValueError(f"expected x of shape [batch, {', '.join(map(str, self.input_shape))}], "
                             f"got {tuple(x.shape)}")

    def edge_apply(self, variables: Variables, x: jax.Array, *, train: bool = False,
                   key: jax.Array | None = None) -> tuple[jax.Array, Variables]:
        """`z = f(x)` for images `x` in [0,1] of shape `[batch, *input_shape]`."""
        z, variables, _ = self.edge_apply_tapped(variables, x, train=train, key=key)
        return z, variables

    def edge_apply_tapped(self, variables: Variables, x: jax.Array, *, train: bool = False,
                          key: jax.Array | None = None, taps: tuple[str, ...] = ()):
        """`edge_apply`, also returning the outputs of the edge layers named in `taps`."""
        self.check_images(x)
        return self.network.apply_tapped(variables, self.normalization.normalize(x), train=train, key=key,
                                         stop=self.cut, taps=taps)

    def cloud_apply(self, variables: Variables, z: jax.Array, *, train: bool = False,
                    key: jax.Array | None = None) -> tuple[jax.Array, Variables]:
        """The cloud's output `g(z)` (the logits when there is no tail; `[members, batch, ...]` with
        members) for transmitted features `z` `[batch, *feature_shape()]`."""
        out, variables, _ = self.cloud_apply_tapped(variables, z, train=train, key=key)
        return out, variables

    def cloud_apply_tapped(self, variables: Variables, z: jax.Array, *, train: bool = False,
                           key: jax.Array | None = None, taps: tuple[str, ...] = ()):
        """`cloud_apply`, also returning the outputs of the cloud layers named in `taps`."""
        if z.ndim < 1 or tuple(z.shape[1:]) != self.feature_shape():
            raise ValueError(f"expected z of shape [batch, {', '.join(map(str, self.feature_shape()))}] "
                             f"(the output of the edge cut at {self.cut!r}), got {tuple(z.shape)}")
        names = self.cloud_names
        run = lambda v: self.network.apply_tapped(v, z, train=train, key=key, start=names[0], stop=names[-1],
                                                  taps=taps)
        if self.members == 1:
            return run(variables)
        out, cloud, tapped = map_models(run, (0,))(self.cloud_variables(variables))
        return out, {group: {**tree, **cloud[group]} for group, tree in variables.items()}, tapped

    def tail_apply(self, variables: Variables, h: jax.Array, *, train: bool = False,
                   key: jax.Array | None = None, taps: tuple[str, ...] = ()):
        """The client tail on the cloud's output: `(logits, new_variables, tapped)`; the identity
        without a tail."""
        if self.tail is None:
            return h, variables, {}
        return self.network.apply_tapped(variables, h, train=train, key=key, start=self.tail, taps=taps)

    def forward(self, variables: Variables, x: jax.Array, *, train: bool = False,
                key: jax.Array | None = None) -> tuple[jax.Array, Variables]:
        """Logits `h(g(f(x)))` without a defense."""
        z, variables = self.edge_apply(variables, x, train=train, key=key)
        out, variables = self.cloud_apply(variables, z, train=train, key=key)
        logits, variables, _ = self.tail_apply(variables, out, train=train, key=key)
        return logits, variables

    def feature_shape(self) -> tuple[int, ...]:
        """Shape of `z` for one image, found by abstract evaluation (once per model)."""
        return _feature_shape(self)


@functools.lru_cache(maxsize=256)
def _feature_shape(model: SplitModel) -> tuple[int, ...]:
    x = jax.ShapeDtypeStruct((1, *model.input_shape), "float32")
    out = jax.eval_shape(lambda v, x: model.edge_apply(v, x)[0], jax.eval_shape(model.init, jax.random.key(0)), x)
    return tuple(out.shape[1:])
