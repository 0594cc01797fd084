"""Recomputed BatchNorm statistics against NumPy batch statistics, for momenta 0.9 and 0.99."""

import jax
import numpy as np
import pytest
from flax import nnx

from mijax import pipeline
from mijax.batch_stats import recompute_batch_stats
from mijax.data.transforms import Normalization
from mijax.models import pv4_classifier_4
from mijax.nn import BatchNorm, Conv2d, Layer, Linear, Sequential, pure
from mijax.split import SplitModel


class _SlowBatchNorm(nnx.Module):
    """A BatchNorm with flax momentum 0.99 (PyTorch 0.01), as in the triplet-attention gates."""

    def __init__(self, channels, *, rngs):
        self.bn = nnx.BatchNorm(channels, momentum=0.99, epsilon=1e-5, rngs=rngs)

    def __call__(self, x, *, train=False, key=None):
        return self.bn(x, use_running_average=not train)


def _model():
    layers = (Layer("conv", pure(lambda r: Conv2d(1, 4, 3, padding=1, rngs=r))),
              Layer("bn1", pure(lambda r: BatchNorm(4, rngs=r))), Layer("relu", jax.nn.relu),
              Layer("bn2", pure(lambda r: _SlowBatchNorm(4, rngs=r))),
              Layer("fc", pure(lambda r: Linear(8 * 8 * 4, 10, rngs=r))))
    return SplitModel(Sequential(layers), "bn1", Normalization(mean=(0.5,), std=(0.5,)), (8, 8, 1), 10)


MODEL = _model()
IMAGES = np.asarray(jax.random.uniform(jax.random.key(1), (40, 8, 8, 1)))


def test_statistics_are_the_mean_of_the_batch_statistics():
    variables = MODEL.init(jax.random.key(0))
    recomputed = recompute_batch_stats(MODEL, variables, IMAGES, key=jax.random.key(2), batch_size=16)
    means, variances = {"conv": [], "relu": []}, {"conv": [], "relu": []}
    for b in range(2):  # 40 images: two batches of 16, the last 8 dropped
        taps = pipeline.run(MODEL, variables, IMAGES[16 * b:16 * (b + 1)], key=jax.random.key(3), train=True,
                            taps=("conv", "relu")).taps
        for name in means:
            x = np.asarray(taps[name], np.float64)
            means[name].append(x.mean(axis=(0, 1, 2)))
            variances[name].append(x.var(axis=(0, 1, 2)))
    stats = recomputed["batch_stats"]
    for layer, tap in (("bn1", "conv"), ("bn2", "relu")):
        leaf = stats[layer]["bn"]
        np.testing.assert_allclose(leaf["mean"], np.mean(means[tap], axis=0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(leaf["var"], np.mean(variances[tap], axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(recomputed["params"]["fc"]["linear"]["kernel"],
                                  variables["params"]["fc"]["linear"]["kernel"])


def test_on_one_batch_eval_mode_reproduces_train_mode():
    # the funnel CNN: BatchNorms at momenta 0.9 and 0.99 (its triplet gates); block4 is before dropout
    model = pv4_classifier_4(image_size=16, width=4)
    variables = model.init(jax.random.key(0))
    images = np.asarray(jax.random.uniform(jax.random.key(4), (32, 16, 16, 3)))
    recomputed = recompute_batch_stats(model, variables, images, key=jax.random.key(2), batch_size=32)
    block4 = lambda v, train: pipeline.run(model, v, images, key=jax.random.key(3), train=train,
                                           taps=("block4",)).taps["block4"]
    train, stale, fresh = block4(variables, True), block4(variables, False), block4(recomputed, False)
    np.testing.assert_allclose(fresh, train, rtol=1e-3, atol=1e-4)
    assert np.abs(stale - train).max() > 100 * np.abs(fresh - train).max()


def test_bad_input_is_named():
    variables = MODEL.init(jax.random.key(0))
    with pytest.raises(ValueError, match="batch_size"):
        recompute_batch_stats(MODEL, variables, IMAGES, key=jax.random.key(2), batch_size=64)
    with pytest.raises(ValueError, match="images"):
        recompute_batch_stats(MODEL, variables, IMAGES * 2 + 1, key=jax.random.key(2), batch_size=16)
