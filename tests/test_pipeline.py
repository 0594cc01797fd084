"""The split pipeline: named taps in the same pass, a client tail, a stacked cloud with a selector."""

import jax
import numpy as np
import optax
import pytest

from mijax import data, defenses, pipeline
from mijax.data.transforms import Normalization
from mijax.models import digits_cnn
from mijax.nn import Layer, Linear, Sequential, member_selector, pure
from mijax.split import SplitModel
from mijax.train import evaluate, fit

MODEL = digits_cnn(image_size=16)
X = jax.random.uniform(jax.random.key(1), (4, 16, 16, 1))


def _ensemble(members=3):
    """digits-sized toy: flatten → fc1 (edge) | fc2, relu (cloud, `members` stacked) | combine → out."""
    linear = lambda name, i, o: Layer(name, pure(lambda r: Linear(i, o, rngs=r)))
    layers = (Layer("flat", lambda x: x.reshape(len(x), -1)), linear("fc1", 256, 32), linear("fc2", 32, 32),
              Layer("relu2", jax.nn.relu), Layer("combine", member_selector(members)), linear("out", 32, 10))
    return SplitModel(Sequential(layers), "fc1", Normalization(mean=(0.5,), std=(0.5,)), (16, 16, 1), 10,
                      tail="combine", members=members)


def test_taps_record_named_outputs_in_the_same_pass():
    variables = MODEL.init(jax.random.key(0))
    out = pipeline.run(MODEL, variables, X, key=jax.random.key(2), taps=("relu1", "sigmoid", "relu3", "fc2"))
    np.testing.assert_allclose(out.taps["relu1"], MODEL.network.apply(variables, MODEL.normalization.normalize(X),
                                                                       stop="relu1")[0], rtol=1e-6)
    np.testing.assert_array_equal(out.taps["sigmoid"], out.z)
    np.testing.assert_array_equal(out.taps["fc2"], out.logits)
    np.testing.assert_allclose(out.logits, MODEL.forward(variables, X)[0], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown layer 'nope'"):
        pipeline.run(MODEL, variables, X, key=jax.random.key(2), taps=("nope",))


def test_a_defense_loss_reads_its_taps_during_training():
    seen = []
    tap = defenses.Defense(loss=lambda state, inputs: seen.append(inputs.taps["relu3"].shape) or 0.0,
                           taps=("relu3",))
    fit(MODEL, np.asarray(X), np.arange(4), optimizer=optax.sgd(0.1), epochs=1, batch_size=4,
        key=jax.random.key(0), defense=tap, progress=False)
    assert seen and seen[0] == (4, 8, 8, 32)   # relu3 of the cloud, recorded in the training pass


def test_stacked_cloud_members_and_client_tail():
    model = _ensemble()
    variables = model.init(jax.random.key(0))
    assert model.cloud_names == ("fc2", "relu2") and model.tail_names == ("combine", "out")
    assert variables["params"]["fc2"]["linear"]["kernel"].shape == (3, 32, 32)   # a member axis on the cloud only
    assert variables["params"]["fc1"]["linear"]["kernel"].shape == (256, 32)
    out = pipeline.run(model, variables, X, key=jax.random.key(1), taps=("relu2",))
    assert out.taps["relu2"].shape == (3, 4, 32)
    members = [model.network.apply(jax.tree.map(lambda a: a[m], model.cloud_variables(variables)), out.z,
                                   start="fc2", stop="relu2")[0] for m in range(3)]
    np.testing.assert_allclose(out.taps["relu2"], np.stack(members), rtol=1e-5, atol=1e-6)
    combined = np.tensordot(np.asarray(variables["params"]["combine"]["weights"]), np.stack(members), 1)
    np.testing.assert_allclose(out.logits, model.network.apply(variables, combined, start="out")[0], rtol=1e-5,
                               atol=1e-6)
    for m in range(1, 3):  # members start from different initialisations
        assert not np.allclose(variables["params"]["fc2"]["linear"]["kernel"][0], variables["params"]["fc2"]["linear"]["kernel"][m])


def test_stacked_cloud_trains_as_one_program_with_its_selector():
    model = _ensemble()
    train, test = data.load("digits", "train"), data.load("digits", "test")
    resize = lambda x: np.clip(np.asarray(data.resize(x, (16, 16))), 0, 1)
    state = fit(model, resize(train.images), train.labels, optimizer=optax.adam(3e-3), epochs=3, batch_size=64,
                key=jax.random.key(0), progress=False)
    weights = np.asarray(state.variables["params"]["combine"]["weights"])
    assert not np.allclose(weights, 1 / 3)   # the client's selector is trained with the rest
    assert evaluate(model, state.variables, resize(test.images), test.labels, key=jax.random.key(1)) > 0.8


def test_bad_tails_and_members():
    network = _ensemble().network
    norm = Normalization(mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="tail"):
        SplitModel(network, "fc1", norm, (16, 16, 1), 10, tail="fc2")   # the cloud would be empty
    with pytest.raises(ValueError, match="members"):
        SplitModel(network, "fc1", norm, (16, 16, 1), 10, members=2)    # nothing combines them
