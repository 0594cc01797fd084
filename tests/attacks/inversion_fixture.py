"""One small training-data-inversion setting on real MNIST, shared by the GMI and KEDMI tests.

Digits 0-4 are private (the target's classes), 5-9 public (the GAN prior's images), as in the
GMI/KEDMI MNIST setup; the evaluation classifier is another architecture trained on all ten classes
(BiDO's DMI configuration). Everything is small so that the two attack tests stay within seconds.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import optax

from mijax import data, train
from mijax.models import digits_cnn, lenet

PRIVATE, PUBLIC = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
EVALUATOR_FEATURES = "relu4"   # digits_cnn's penultimate layer (fc1 + ReLU, 128 features)


def key(seed):
    return jax.random.key(seed, impl="rbg")   # XLA-CPU compiles threefry slowly for every new shape


@functools.cache
def setting(num_private: int = 2000, num_public: int = 2000):
    """`dict` with the private/public splits, the trained target (lenet, 5 classes) and evaluator."""
    mnist = data.load("mnist", "train")
    private = np.isin(mnist.labels, PRIVATE)
    public = np.isin(mnist.labels, PUBLIC)
    x_private, y_private = mnist.images[private][:num_private], mnist.labels[private][:num_private]
    x_public = mnist.images[public][:num_public]
    target = lenet(cut="relu2", num_classes=len(PRIVATE))
    target_state = train.fit(target, x_private, y_private, optimizer=optax.adam(1e-3), epochs=2, batch_size=64,
                             key=key(0), progress=False)
    evaluator = digits_cnn(cut=EVALUATOR_FEATURES, num_classes=10, image_size=28)
    x_eval, y_eval = mnist.images[:4000], mnist.labels[:4000]
    evaluator_state = train.fit(evaluator, x_eval, y_eval, optimizer=optax.adam(1e-3), epochs=3, batch_size=64,
                                key=key(1), progress=False)
    test = data.load("mnist", "test")
    test_private = np.isin(test.labels, PRIVATE)
    return {"x_private": x_private, "y_private": y_private, "x_public": x_public,
            "target": target, "target_variables": target_state.variables,
            "evaluator": evaluator, "evaluator_variables": evaluator_state.variables,
            "x_test": test.images[test_private][:1000], "y_test": test.labels[test_private][:1000],
            "x_test_all": test.images[:1000], "y_test_all": test.labels[:1000]}


def classifier():
    from mijax.attacks.released import ReleasedClassifier
    s = setting()
    return ReleasedClassifier.from_model(s["target"], s["target_variables"])


@functools.cache
def gmi_prior():
    """GMI's WGAN-GP prior on the public digits: MLPs (the conv pair costs 25x more per step on CPU),
    30 epochs of 31 steps, lr 4e-3 (BiDO's MNIST setting), n_critic 5."""
    from mijax.attacks.gmi import PriorConfig, train_gmi_prior
    from mijax.models import mlp_critic, mlp_generator
    generator = mlp_generator(latent_dim=100, image_shape=(28, 28, 1), hidden=(128, 256)).as_pure()
    critic = mlp_critic(image_shape=(28, 28, 1), hidden=(256, 128)).as_pure()
    return train_gmi_prior(generator, critic, setting()["x_public"], config=PriorConfig(epochs=30), key=key(2),
                           progress=False)


def scores(images, targets):
    """Attack accuracy and KNN distance of `images` `[n, 28, 28, 1]` made for `targets` `[n]`."""
    from mijax.attacks.evaluation import inversion_scores
    s = setting()
    return inversion_scores(s["evaluator"], s["evaluator_variables"], np.asarray(images), np.asarray(targets),
                            private_images=s["x_private"], private_labels=s["y_private"],
                            feature_layer=EVALUATOR_FEATURES)


@functools.cache
def kedmi_prior():
    """KEDMI's K+1-class discriminator, trained with KEDMI's loss (the target's soft labels on the public
    digits, unlabelled weight 10, minibatch discrimination) against GMI's generator, frozen: at this
    budget KEDMI's feature-matching generator collapses to one image (measured: top-1 0.0-0.2)."""
    from mijax.attacks.gmi import TrainedPrior
    from mijax.attacks.kedmi import KedmiPriorConfig, train_kedmi_prior
    from mijax.models import mlp_critic
    gmi = gmi_prior()
    discriminator = mlp_critic(image_shape=(28, 28, 1), hidden=(256, 128), outputs=5, minibatch=(16, 8))
    trained = train_kedmi_prior(gmi.generator, discriminator, classifier(), setting()["x_public"],
                                config=KedmiPriorConfig(epochs=10, learning_rate=1e-3, train_generator=False),
                                generator_variables=gmi.generator_variables, key=key(5), progress=False)
    return TrainedPrior(gmi.generator, discriminator, gmi.generator_variables, trained.critic_variables, 100)
