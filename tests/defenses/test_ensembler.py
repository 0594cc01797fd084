"""Ensembler (Liu et al., arXiv 2401.10859): selector, P-penalty, cosine term, stage 1 as one program,
the stacked forward. Behavioural tests against the attacks are in tests/attacks/test_ensembler_levels.py."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mijax import data
from mijax.defenses import ensembler as E
from mijax.models.resnet18 import resnet18
from mijax.train import fit
import optax

SMALL = dict(width=4, blocks=(1, 1, 1, 1))  # ResNet-18's layout at reduced width and depth: CI time


def test_selector_weights_penalty_and_top_mask_match_numpy():
    rng = np.random.default_rng(0)
    for n, p in itertools.product((3, 5), (1, 2)):
        logits, mask = rng.normal(size=n), (rng.random(n) < 0.7).astype(np.float32)
        mask[0] = 1
        w = np.asarray(E.selector_weights(jnp.asarray(logits), jnp.asarray(mask)))
        e = np.where(mask > 0, np.exp(logits), 0.0)
        np.testing.assert_allclose(w, e / e.sum(), rtol=1e-6)
        g = np.asarray(E.selector_weights(jnp.asarray(logits), jnp.asarray(mask), weighting="sigmoid"))
        np.testing.assert_allclose(g, mask / (1 + np.exp(-logits)), rtol=1e-6)
        # R_P: the share of |w| outside the P largest
        order = np.argsort(-np.abs(w))
        outside = sum(abs(w[i]) for i in order[p:])
        np.testing.assert_allclose(float(E.selection_penalty(jnp.asarray(w), p)), outside / np.abs(w).sum(),
                                   rtol=1e-5, atol=1e-7)
        top = np.asarray(E.top_mask(jnp.asarray(logits), jnp.asarray(mask), p))
        masked = np.where(mask > 0, logits, -np.inf)
        expected = np.zeros(n)
        expected[np.argsort(-masked, kind="stable")[:min(p, int(mask.sum()))]] = 1
        np.testing.assert_array_equal(top, expected)


def test_shadow_cosine_matches_a_numpy_loop():
    rng = np.random.default_rng(1)
    z, shadows, targets = rng.normal(size=(4, 3, 3, 2)), rng.normal(size=(3, 4, 3, 3, 2)), np.array([1.0, 0.0, 1.0])
    for form, c in (("signed", lambda v: v), ("abs", abs), ("relu", lambda v: max(v, 0.0))):
        got = np.asarray(E.shadow_cosine(jnp.asarray(z), jnp.asarray(shadows), form=form, targets=jnp.asarray(targets)))
        for b in range(4):
            ref = 0.0
            for i in range(3):
                a, s = z[b].ravel(), shadows[i, b].ravel()
                ref += targets[i] * c(a @ s / (np.linalg.norm(a) * np.linalg.norm(s)))
            np.testing.assert_allclose(got[b], ref, rtol=1e-5)
    with pytest.raises(ValueError, match="form"):
        E.shadow_cosine(jnp.asarray(z), jnp.asarray(shadows), form="cos")


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="selected"):
        E.EnsemblerConfig(members=3, selected=4).validate()
    with pytest.raises(ValueError, match="cos_form"):
        E.EnsemblerConfig(members=3, selected=1, cos_form="square").validate()


@pytest.fixture(scope="module")
def cifar(data_dir):
    return data.load("cifar10", "train[:128]")


@pytest.mark.slow
def test_stage1_members_as_one_program_equal_single_runs(cifar):
    model = resnet18(**SMALL)
    config = E.EnsemblerConfig(members=2, selected=1, stage1_epochs=1, batch_size=32, augment=False)
    key = jax.random.key(3)
    stacked = E.train_members(model, cifar.images, cifar.labels, config=config, key=key, progress=False)
    # the same members, one at a time: member m's initialisation and perturbation state, same data order
    init_key, delta_key, fit_key = jax.random.split(key, 3)
    defense = E.member_perturbation(sigma=config.sigma, scale=config.perturbation_scale)
    states = E.member_states(defense, delta_key, model.defense_spec(), 2)
    starts = E.init_members(model, init_key, 2)
    assert not np.allclose(states["delta"][0], states["delta"][1])  # members are biased differently
    for m in range(2):
        single = fit(model, cifar.images, cifar.labels, optimizer=optax.adam(config.learning_rate), epochs=1,
                     batch_size=32, key=fit_key, defense=defense, defense_state=jax.tree.map(lambda a: a[m], states),
                     variables=jax.tree.map(lambda a: a[m], starts), progress=False)
        for a, b in zip(jax.tree.leaves(single.variables), jax.tree.leaves(stacked.variables)):
            np.testing.assert_allclose(a, b[m], rtol=2e-4, atol=2e-5)
    assert not np.allclose(stacked.variables["params"]["fc"]["linear"]["kernel"][0],
                           stacked.variables["params"]["fc"]["linear"]["kernel"][1])


@pytest.mark.slow
def test_stacked_forward_equals_a_python_loop_and_hardened_selector_is_P_sparse(cifar):
    member_model = resnet18(**SMALL)
    config = E.EnsemblerConfig(members=3, selected=2)
    model = E.ensembler_model(member_model, config)
    members = E.init_members(member_model, jax.random.key(0), 3)
    variables = E.assemble(model, members, jax.random.key(1))
    assert E.deployed_weights(variables).shape == (3,) and np.all(np.asarray(E.deployed_weights(variables)) > 0)
    variables = E.harden(variables, config.selected)
    weights = np.asarray(E.deployed_weights(variables))
    assert np.count_nonzero(weights) == config.selected  # P-sparse
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)
    x, key = cifar.images[:8], jax.random.key(2)
    logits = E.deployed_logits(model, variables, x, sigma=0.3, key=key)
    # the loop: the same head and noise, member by member through its own body, weighted, then fc
    z, _ = model.edge_apply(variables, x)
    z_tilde = z + 0.3 * jax.random.normal(key, z.shape)
    start, stop = model.cloud_names[0], model.cloud_names[-1]
    body_fn = jax.jit(lambda body, z: member_model.network.apply(body, z, start=start, stop=stop)[0])
    outs = [np.asarray(body_fn(jax.tree.map(lambda a: a[m], model.cloud_variables(variables)), z_tilde))
            for m in range(3)]
    combined = sum(weights[m] * outs[m] for m in range(3))
    fc = {g: {"fc": t["fc"]} for g, t in variables.items()}
    expected = member_model.network.apply(fc, jnp.asarray(combined), start="fc")[0]
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
    # the stage-1 members' bodies are the deployed members, untouched by assembling
    np.testing.assert_array_equal(variables["params"]["layer1_1"]["conv_a"]["conv"]["kernel"],
                                  members["params"]["layer1_1"]["conv_a"]["conv"]["kernel"])
