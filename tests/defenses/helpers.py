"""Shared by the defense tests: a feature batch, and a trained split model to attack."""

from typing import NamedTuple

import jax
import numpy as np
import optax

from mijax import data, defenses, metrics
from mijax.attacks import RMLEConfig, WhiteBox, rmle
from mijax.models import digits_cnn
from mijax.pipeline import transmit
from mijax.train import evaluate, fit

KEY = jax.random.key(0)
Z = jax.random.uniform(jax.random.key(1), (64, 8, 8, 4))


def apply_features(defense, z=Z, key=KEY, state=None):
    return defense.feature_transform(defense.init() if state is None else state, z, key, train=False)


class Outcome(NamedTuple):
    ssim: float      # the white-box rMLE attack's mean canonical SSIM on 10 test images
    accuracy: float  # test accuracy of the deployed pipeline (defense active)


class DigitsTarget(NamedTuple):
    """digits_cnn at 16×16, cut at its sigmoid bottleneck, trained 8 epochs on the real digits."""

    model: object
    images: np.ndarray
    labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    variables: dict

    def fit(self, defense=None):
        return fit(self.model, self.images, self.labels, optimizer=optax.adam(2e-3), epochs=8, batch_size=64,
                   key=jax.random.key(0), defense=defense, progress=False).variables

    def attack(self, variables, defense=None) -> Outcome:
        """rMLE (200 Adam steps in pixel space) on what the deployed edge transmits."""
        defense = defense or defenses.identity()
        targets = self.test_images[:10]
        z_tilde = transmit(self.model, variables, targets, defense=defense, defense_state=defense.init(),
                           key=jax.random.key(5)).z_tilde
        config = RMLEConfig(num_steps=200, learning_rate=0.05, tv_weight=0.05, optimizer="adam",
                            space="pixel", eps=1e-8)
        x_hat = rmle(WhiteBox.from_model(self.model, variables), z_tilde, config=config)
        accuracy = evaluate(self.model, variables, self.test_images, self.test_labels, defense=defense,
                            key=jax.random.key(6))
        return Outcome(float(metrics.ssim(x_hat, targets).mean()), float(accuracy))


def digits_target() -> DigitsTarget:
    resize = lambda x: np.clip(np.asarray(data.resize(x, (16, 16))), 0, 1)
    train, test = data.load("digits", "train"), data.load("digits", "test")
    target = DigitsTarget(digits_cnn(image_size=16), resize(train.images), train.labels,
                          resize(test.images), test.labels, {})
    return target._replace(variables=target.fit())
