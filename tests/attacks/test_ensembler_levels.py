"""Attacks on Ensembler at the knowledge levels A0–A3 (and the reference points R1/R2) on a briefly
trained Ensembler at its (shallowest) cut, conv1, on real CIFAR-10: the knowledge types keep the
selector and the head's weights away from the attacks below A3; the reference attacks beat the mean
image of the attacker's data, and the shadow attacks of every level are measured against both."""

import dataclasses

import jax
import numpy as np
import pytest

from mijax import data, defenses, metrics
from mijax.attacks import BlackBox, RMLEConfig, WhiteBox, rmle
from mijax.attacks import ensembler_levels as L
from mijax.attacks.learned_inversion import InverseNetworkConfig, inverse_network
from mijax.defenses import ensembler as E
from mijax.models.decoders import decoder_for
from mijax.models.resnet18 import resnet18

SIGMA = 0.1
CONFIG = E.EnsemblerConfig(members=2, selected=1, sigma=SIGMA, stage1_epochs=2, stage2_epochs=1, stage3_epochs=1,
                           batch_size=64, augment=False)
LEVEL = L.LevelConfig(epochs=2, sigma=SIGMA, max_subsets=3, decoder=InverseNetworkConfig(epochs=3, batch_size=64),
                      rmle=RMLEConfig(num_steps=100, learning_rate=0.05, tv_weight=0.05, optimizer="adam",
                                      space="pixel", eps=1e-8))


@pytest.fixture(scope="module")
def trained(data_dir):
    train, test = data.load("cifar10", "train[:1024]"), data.load("cifar10", "test[:1024]")
    member_model = resnet18(width=8, blocks=(1, 1, 1, 1))
    result = E.train_ensembler(member_model, train.images, train.labels, config=CONFIG, key=jax.random.key(0),
                               progress=False)
    targets = test.images[1000:1010]
    z_tilde = E.transmit_features(result.model, result.variables, targets, sigma=SIGMA, key=jax.random.key(9))
    aux = test._replace(images=test.images[:1000], labels=test.labels[:1000])
    mean_mse = float(np.mean(metrics.mse(np.broadcast_to(aux.images.mean(0), targets.shape), targets)))
    return result, aux, targets, z_tilde, mean_mse


@pytest.mark.slow
def test_attacks_below_a3_cannot_receive_the_selector_or_the_head(trained):
    result, aux, *_ = trained
    members = L.ServerMembers.from_model(result.model, result.variables)
    # the type's leaves are exactly the server's members: no conv1 (head), combine (selector) or fc (tail)
    assert set(members.variables["params"]) == set(result.model.cloud_names) - {"pool"}  # pool: no variables
    assert not {"conv1", "combine", "fc"} & set(members.variables["params"])
    assert {f.name for f in dataclasses.fields(members)} == {
        "program", "variables", "head", "tail", "normalization", "feature_shape", "input_shape", "num_classes"}
    known = L.KnownSelection(members, E.deployed_weights(result.variables))
    for attack in (L.a0_single_members, L.a1_guessed_subsets, L.a2_learned_selector):
        for wrong in (known, WhiteBox.from_model(result.model, result.variables)):
            with pytest.raises(TypeError, match="ServerMembers"):
                attack(wrong, aux.images, aux.labels, config=LEVEL, key=jax.random.key(0))
    with pytest.raises(TypeError, match="KnownSelection"):
        L.a3_true_selection(members, aux.images, aux.labels, config=LEVEL, key=jax.random.key(0))
    masks = L.guessed_subsets(4, 20, jax.random.key(1))
    assert len(masks) == 15 and len({tuple(m) for m in masks}) == 15 and masks.sum(1).min() >= 1
    assert np.all(L.guessed_subsets(4, 3, jax.random.key(1), size=2).sum(1) == 2)


@pytest.mark.slow
def test_every_level_against_the_mean_image_and_the_white_box_reference(trained):
    result, aux, targets, z_tilde, mean_mse = trained
    members = L.ServerMembers.from_model(result.model, result.variables)
    known = L.KnownSelection(members, E.deployed_weights(result.variables))
    scores = {}
    for level, attack, knowledge in (("A0", L.a0_single_members, members), ("A1", L.a1_guessed_subsets, members),
                                     ("A2", L.a2_learned_selector, members), ("A3", L.a3_true_selection, known)):
        shadows = attack(knowledge, aux.images, aux.labels, config=LEVEL, key=jax.random.key(1), progress=False)
        x_hat = L.shadow_rmle(shadows, z_tilde, config=LEVEL.rmle)[shadows.best]
        scores[level] = float(np.mean(metrics.mse(x_hat, targets)))
    decoder = L.shadow_decoder(shadows, 0, aux.images, config=LEVEL, key=jax.random.key(2), progress=False)
    scores["A3 inverse network"] = float(np.mean(metrics.mse(decoder.decode(z_tilde), targets)))
    oracle = BlackBox.from_model(result.model, result.variables, defense=defenses.gaussian_noise(sigma=SIGMA))
    x_r1 = inverse_network(oracle, z_tilde, config=LEVEL.decoder, key=jax.random.key(3), images=aux.images,
                           decoder=decoder_for(result.model.feature_shape(), (32, 32, 3), width=32),
                           query_key=jax.random.key(4), progress=False)
    scores["R1"] = float(np.mean(metrics.mse(x_r1, targets)))
    x_r2 = rmle(WhiteBox.from_model(result.model, result.variables), z_tilde, config=LEVEL.rmle)
    scores["R2"] = float(np.mean(metrics.mse(x_r2, targets)))
    print("mean image MSE", mean_mse, scores)
    # Measured (12-02, shared 2-core machine): mean image 0.0584; shadow + rMLE A0 0.103, A1 0.093,
    # A2 0.115, A3 0.105; A3 inverse network 0.061; R1 0.0142; R2 0.0012. The reference attacks, which
    # reach the private head, beat the mean image; the shadow attacks of every level, whose shadow
    # heads are trained for 2 epochs through the frozen members, do NOT at this budget (the issue asks
    # that they do; see the report) — they are an order of magnitude worse than the white-box one.
    # Also measured (12-02, scratch runs on this fixture): 6–20 shadow epochs (lr 1e-3/3e-3) raise the
    # shadows' accuracy (0.16 → 0.34) but not the inversion (A3 0.13–0.14); matching the observed
    # traffic's channel statistics (match_weight 1–10) gives A0 0.079, A1–A3 0.16–0.17; rMLE with
    # 300 steps / TV 0.01–2 through the A3 shadow 0.094–0.106; even the TRUE head inverted at the
    # members' output (members(h(x̂)) ≈ members(z̃)) gives 0.095. The shadow heads stay uncorrelated
    # with the deployed head (per-channel correlation ≤ 0.1): cross-entropy through these briefly
    # trained members does not identify the head, so no shadow attack beats the mean image here.
    assert scores["R1"] < mean_mse and scores["R2"] < mean_mse, scores
    for level in ("A0", "A1", "A2", "A3", "A3 inverse network"):
        assert scores[level] > 10 * scores["R2"], (level, scores)


def test_traffic_statistics_vanish_on_the_traffic_itself():
    # the traffic-matching term [mijax extension] is zero when the shadow's features are the traffic
    z = np.random.default_rng(0).normal(size=(4, 6, 6, 3)).astype(np.float32) * [1.0, 2.0, 0.5] + [0.0, 1.0, -1.0]
    target = L.observed_statistics(z)
    for match in L.MATCHES:
        assert float(L.feature_statistics(jax.numpy.asarray(z), target, match=match)) < 1e-6
        assert float(L.feature_statistics(jax.numpy.asarray(z) + 1.0, target, match=match)) > 0.1
    with pytest.raises(ValueError, match="match"):
        L.feature_statistics(jax.numpy.asarray(z), target, match="gram")
