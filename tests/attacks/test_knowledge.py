"""The knowledge types are sealed: each holds exactly the arrays its threat level may see."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mijax import defenses
from mijax.attacks import BlackBox, QueryFree, WhiteBox
from mijax.data.transforms import Normalization
from mijax.models import digits_cnn
from mijax.nn import Layer, Linear, Sequential, member_selector, pure
from mijax.split import SplitModel

MODEL = digits_cnn(image_size=16)
VARIABLES = MODEL.init(jax.random.key(0))
X = jax.random.uniform(jax.random.key(1), (3, 16, 16, 1))
PIXELS = Normalization(mean=(0.0,), std=(1.0,))


def _layer_names(knowledge):
    """The layers whose parameters are among `knowledge`'s leaves (read from the leaves' paths)."""
    names = set()
    for path, _ in jax.tree_util.tree_flatten_with_path(knowledge)[0]:
        keys = [getattr(k, "key", None) for k in path]
        if "params" in keys:
            names.add(keys[keys.index("params") + 1])
    return names


def test_each_level_holds_only_its_part_of_the_network():
    white, black = WhiteBox.from_model(MODEL, VARIABLES), BlackBox.from_model(MODEL, VARIABLES)
    free = QueryFree.from_model(MODEL, VARIABLES)
    with_params = set(VARIABLES["params"])
    assert _layer_names(white) == _layer_names(black) == set(MODEL.edge_names) & with_params == {"conv1", "conv2"}
    assert _layer_names(free) == set(MODEL.cloud_names) & with_params == {"conv3", "fc1", "fc2"}
    edge_leaves = jax.tree.leaves(MODEL.edge_variables(VARIABLES))
    assert len(jax.tree.leaves(black)) == len(edge_leaves)  # the oracle carries nothing else


def test_black_box_query_is_not_differentiable():
    oracle = BlackBox.from_model(MODEL, VARIABLES)
    np.testing.assert_allclose(oracle.query(X), MODEL.edge_apply(VARIABLES, X)[0], rtol=1e-6)
    with pytest.raises(TypeError, match="not differentiable"):
        jax.grad(lambda x: oracle.query(x).sum())(X)
    with pytest.raises(TypeError, match="not differentiable"):
        jax.grad(lambda o: o.query(X).sum())(oracle)
    white = WhiteBox.from_model(MODEL, VARIABLES)   # the white-box level is differentiable
    assert float(jnp.abs(jax.grad(lambda x: white.edge(x).sum())(X)).sum()) > 0


def test_oracles_are_arguments_of_compiled_programs_not_constants():
    query = jax.jit(lambda oracle, x: oracle.query(x))
    a, b = BlackBox.from_model(MODEL, VARIABLES), BlackBox.from_model(MODEL, MODEL.init(jax.random.key(2)))
    za, zb = query(a, X), query(b, X)
    assert query._cache_size() == 1 and not np.allclose(za, zb)  # new weights, same program
    white = jax.jit(lambda k, x: k.edge(x))
    white(WhiteBox.from_model(MODEL, VARIABLES), X), white(WhiteBox.from_model(MODEL, MODEL.init(jax.random.key(2))), X)
    assert white._cache_size() == 1


def test_programs_may_not_close_over_arrays():
    weights = jnp.ones((16, 4))
    with pytest.raises(ValueError, match="close over no arrays"):
        BlackBox(lambda _, x, key: x.reshape(len(x), -1) @ weights, input_shape=(4, 4, 1))
    with pytest.raises(ValueError, match="close over no arrays"):
        WhiteBox(lambda _, x: x.reshape(len(x), -1) @ weights, (), normalization=PIXELS, input_shape=(4, 4, 1))
    oracle = BlackBox(lambda w, x, key: x.reshape(len(x), -1) @ w, input_shape=(4, 4, 1), state=weights)
    assert oracle.query(jnp.ones((2, 4, 4, 1))).shape == (2, 4)


def test_stochastic_oracle_needs_a_key_and_stacked_oracle_equals_single_ones():
    noise = defenses.gaussian_noise(sigma=0.1)
    oracle = BlackBox.from_model(MODEL, VARIABLES, defense=noise)
    with pytest.raises(ValueError, match="expected a key"):
        oracle.query(X)
    other = MODEL.init(jax.random.key(3))
    stacked_vars = jax.tree.map(lambda a, b: jnp.stack([a, b]), VARIABLES, other)
    stacked = BlackBox.stacked(MODEL, stacked_vars, defense=noise)
    key = jax.random.key(4)
    z = stacked.query(X, key)
    for m, v in enumerate((VARIABLES, other)):
        np.testing.assert_allclose(z[m], BlackBox.from_model(MODEL, v, defense=noise).query(X, key), rtol=1e-5,
                                   atol=1e-6)


def test_query_free_needs_the_cloud_to_end_in_logits():
    layers = (Layer("flat", lambda x: x.reshape(len(x), -1)), Layer("fc1", pure(lambda r: Linear(4, 6, rngs=r))),
              Layer("fc2", pure(lambda r: Linear(6, 5, rngs=r))), Layer("combine", member_selector(2)),
              Layer("out", pure(lambda r: Linear(5, 3, rngs=r))))
    model = SplitModel(Sequential(layers), "fc1", PIXELS, (2, 2, 1), 3, tail="combine", members=2)
    with pytest.raises(ValueError, match="client tail"):
        QueryFree.from_model(model, model.init(jax.random.key(0)))
