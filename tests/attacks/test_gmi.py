"""GMI (`mijax.attacks.gmi`) and the inversion evaluation (`mijax.attacks.evaluation`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mijax.attacks.evaluation import knn_distance
from mijax.attacks.gmi import GmiConfig, TrainedPrior, _gmi_losses, _gmi_program, gmi_attack
from mijax.attacks.knowledge import EvalProgram
from mijax.attacks.released import ReleasedClassifier
from mijax.models import mlp_critic, mlp_generator
from tests.attacks import inversion_fixture as fx


def test_knn_distance_matches_a_numpy_loop():
    rng = np.random.default_rng(0)
    features, private = rng.normal(size=(7, 5)), rng.normal(size=(30, 5))
    targets, labels = rng.integers(0, 3, 7), rng.integers(0, 3, 30)
    want = [min(float(np.sum((f - p) ** 2)) for p, y in zip(private, labels) if y == t)
            for f, t in zip(features, targets)]
    np.testing.assert_allclose(knn_distance(features, targets, private, labels), want, rtol=1e-4)
    with pytest.raises(ValueError, match="private_features"):
        knn_distance(features, targets, private[:, :4], labels)


def _toy():
    """A tiny generator, critic and 3-class classifier (MLPs on 2×2 images) for the update rule."""
    generator = mlp_generator(latent_dim=4, image_shape=(2, 2, 1), hidden=(8,)).as_pure()
    critic = mlp_critic(image_shape=(2, 2, 1), hidden=(8,)).as_pure()
    net = mlp_critic(image_shape=(2, 2, 1), hidden=(8,), outputs=3)
    prior = TrainedPrior(generator, critic, generator.init(fx.key(0)), critic.init(fx.key(1)), 4)
    classifier = ReleasedClassifier(EvalProgram(net), net.init(fx.key(2)), input_shape=(2, 2, 1), num_classes=3)
    return prior, classifier


def test_gmi_latent_update_is_the_reference_nesterov_step():
    # GMI-attack: v' = μv − lr·∇L, z ← clamp(z − μv + (1 + μ)v', −1, 1), L the mean over the batch of targets
    prior, classifier = _toy()
    targets = jnp.array([0, 2, 1])
    config = GmiConfig(iterations=6, restarts=2, learning_rate=0.3, identity_weight=5.0)
    key = fx.key(4)
    result = _gmi_program(classifier, prior, targets, key, config)
    z = np.array(jax.random.normal(key, (2, 3, 4)))
    v = np.zeros_like(z)

    @jax.jit
    @jax.grad
    def gradient(zr):   # one restart: the reference's batch of the three targets
        p, i = _gmi_losses(classifier, prior, targets, zr[None])
        return jnp.mean(p + config.identity_weight * i)

    for _ in range(config.iterations):
        for r in range(2):
            g = np.asarray(gradient(jnp.asarray(z[r])))
            v_new = config.momentum * v[r] - config.learning_rate * g
            z[r] = np.clip(z[r] - config.momentum * v[r] + (1 + config.momentum) * v_new, -1, 1)
            v[r] = v_new
    np.testing.assert_allclose(result.latents, np.swapaxes(z, 0, 1), atol=1e-5)
    assert result.images.shape == (3, 2, 2, 2, 1) and result.best.shape == (3,)


@pytest.mark.slow
def test_gmi_reconstructs_the_private_classes_of_an_undefended_mnist_target():
    # measured (12-02, 2000 private digits 0-4, lenet target 93.8% test accuracy; evaluator digits_cnn
    # on all ten classes, 89%; MLP WGAN-GP prior on 2000 public digits 5-9, 30 epochs): GMI with 300
    # iterations, 4 restarts: evaluator top-1 0.50 on 20 reconstructions (KNN 66), against 0.05 for
    # prior samples (KNN 156) and 0.1 for a guess among ten classes.
    prior, classifier = fx.gmi_prior(), fx.classifier()
    targets = np.arange(5)
    config = GmiConfig(iterations=300, restarts=4)
    before = _gmi_program._cache_size()
    result = gmi_attack(classifier, prior, targets, config=config, key=fx.key(3))
    gmi_attack(classifier, prior, targets, config=config, key=fx.key(4))
    assert _gmi_program._cache_size() == before + 1     # every target and restart: one compiled program
    images = np.asarray(result.images).reshape(-1, 28, 28, 1)
    labels = np.repeat(targets, config.restarts)
    attack = fx.scores(images, labels)
    baseline = fx.scores(prior.generate(jax.random.normal(fx.key(9), (20, 100))), labels)
    assert attack["top1"] >= 0.3, attack
    assert attack["top1"] >= baseline["top1"] + 0.2, (attack, baseline)
    assert attack["knn_distance"] < baseline["knn_distance"], (attack, baseline)
    # the target itself is fooled on (nearly) every reconstruction
    assert np.mean(np.argmax(classifier.logits(images), -1) == labels) >= 0.9


def test_gmi_rejects_bad_input():
    prior, classifier = _toy()
    with pytest.raises(ValueError, match="targets"):
        gmi_attack(classifier, prior, [0, 3], key=fx.key(0))
    with pytest.raises(TypeError, match="ReleasedClassifier"):
        gmi_attack(prior, prior, [0], key=fx.key(0))
    with pytest.raises(ValueError, match="restarts"):
        gmi_attack(classifier, prior, [0], config=GmiConfig(restarts=0), key=fx.key(0))
