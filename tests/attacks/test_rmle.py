import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mijax import data, metrics
from mijax.attacks import RMLEConfig, WhiteBox, rmle
from mijax.attacks.mle_inversion import rmle_objective
from mijax.data.transforms import Normalization
from mijax.models import cifar10cnn, lenet
from mijax.optim import torch_amsgrad
from mijax.train import fit

from .test_priors_and_optim import _tv_numpy


def _linear_knowledge():
    """A linear edge z = A·vec(normalise(x)), simple enough to write the objective in NumPy."""
    a = np.asarray(jax.random.normal(jax.random.key(7), (5 * 4 * 2, 12)), np.float32)
    norm = Normalization(mean=(0.3, 0.5), std=(0.2, 0.4))
    edge = lambda a, x: norm.normalize(x).reshape(x.shape[0], -1) @ a
    return WhiteBox(edge, jnp.asarray(a), normalization=norm, input_shape=(5, 4, 2)), a, norm


@pytest.mark.parametrize("config", [
    RMLEConfig(tv_weight=0.7, l2_weight=0.3),
    RMLEConfig.paper(tv_weight=0.2),
])
def test_objective_matches_numpy(config):
    knowledge, a, norm = _linear_knowledge()
    u = np.asarray(jax.random.normal(jax.random.key(1), (3, 5, 4, 2)), np.float32)
    z = np.asarray(jax.random.normal(jax.random.key(2), (3, 12)), np.float32)
    mean, std = np.array([0.3, 0.5]), np.array([0.2, 0.4])
    x = u * std + mean if config.space == "normalized" else u
    diff = ((x - mean) / std).reshape(3, -1) @ a - z
    feature = (diff ** 2).mean(-1) if config.feature_loss == "mean" else (diff ** 2).sum(-1)
    expected = feature + config.tv_weight * _tv_numpy(u, config.tv) + config.l2_weight * (u.reshape(3, -1) ** 2).mean(-1)
    np.testing.assert_allclose(rmle_objective(knowledge, jnp.asarray(u), z, config=config), expected, rtol=1e-4)


def test_rmle_equals_a_plain_optimisation_loop():
    knowledge, _, norm = _linear_knowledge()
    z = jax.random.normal(jax.random.key(3), (2, 12))
    config = RMLEConfig(num_steps=25, learning_rate=0.05, tv_weight=0.1)
    opt = torch_amsgrad(0.05, eps=1e-3, legacy_eps=True)   # the authors' PyTorch 1.0 rule, the default
    u = jnp.zeros((2, 5, 4, 2))
    state = opt.init(u)
    for _ in range(25):
        grads = jax.grad(lambda u: jnp.sum(rmle_objective(knowledge, u, z, config=config)))(u)
        updates, state = opt.update(grads, state, u)
        u = optax.apply_updates(u, updates)
    expected = np.clip(norm.denormalize(u), 0, 1)
    np.testing.assert_allclose(rmle(knowledge, z, config=config), expected, rtol=1e-5, atol=1e-6)


def test_vmaps_over_noise_levels_and_restarts():
    knowledge, _, _ = _linear_knowledge()
    z = jax.random.normal(jax.random.key(3), (2, 12))
    config = RMLEConfig(num_steps=10, learning_rate=0.05)
    noisy = z + jnp.array([0.0, 0.5, 1.0])[:, None, None] * jax.random.normal(jax.random.key(4), (3, 2, 12))
    swept = jax.vmap(lambda zz: rmle(knowledge, zz, config=config))(noisy)
    np.testing.assert_allclose(swept[1], rmle(knowledge, noisy[1], config=config), rtol=1e-5)
    starts = jax.random.uniform(jax.random.key(5), (4, 2, 5, 4, 2))
    x_hat, loss = jax.vmap(lambda x0: rmle(knowledge, z, config=config, x_init=x0, return_loss=True))(starts)
    assert x_hat.shape == (4, 2, 5, 4, 2) and loss.shape == (4, 2)
    tv_swept = jax.vmap(lambda w: rmle(knowledge, z, config=RMLEConfig(num_steps=10, tv_weight=w)))(jnp.array([0.0, 1.0]))
    assert tv_swept.shape == (2, 2, 5, 4, 2)


def test_bad_input():
    knowledge, _, _ = _linear_knowledge()
    with pytest.raises(ValueError, match=r"expected z_observed of shape \(2, 12\)"):
        rmle(knowledge, jnp.zeros((2, 11)))
    with pytest.raises(ValueError, match="expected tv in"):
        rmle(knowledge, jnp.zeros((2, 12)), config=RMLEConfig(tv="l1"))


def _recover(model, variables, images, steps, lr):
    # the current AMSGrad eps rule: the authors' legacy rule (effective eps 3e-2 at step 1, 2e-3 at
    # step 300) converges too slowly for 300 steps (measured 12-02: SSIM 0.89 and 0.71 where these pass)
    knowledge = WhiteBox.from_model(model, variables)
    z, _ = model.edge_apply(variables, images)
    config = RMLEConfig(num_steps=steps, learning_rate=lr, legacy_eps=False)
    x_hat = jax.jit(lambda z: rmle(knowledge, z, config=config))(z)
    return float(np.mean(metrics.ssim(np.asarray(x_hat), images)))


def test_recovers_real_cifar_images_from_conv11(data_dir):
    test = data.load("cifar10", "test[:4]", data_dir=data_dir)
    model = cifar10cnn(cut="conv11")
    variables = model.init(jax.random.key(0))
    assert _recover(model, variables, test.images, 300, 0.05) > 0.9  # untrained
    train = data.load("cifar10", "train[:512]", data_dir=data_dir)
    state = fit(model, train.images, train.labels, optimizer=torch_amsgrad(1e-3, eps=1e-3), epochs=1,
                batch_size=32, key=jax.random.key(1), progress=False)
    assert _recover(model, state.variables, test.images, 300, 0.05) > 0.9  # briefly trained


def test_recovers_real_mnist_images_from_conv1(data_dir):
    test = data.load("mnist", "test[:4]", data_dir=data_dir)
    model = lenet(cut="conv1")
    train = data.load("mnist", "train[:1024]", data_dir=data_dir)
    state = fit(model, train.images, train.labels, optimizer=torch_amsgrad(1e-3, eps=1e-3), epochs=1,
                batch_size=32, key=jax.random.key(1), progress=False)
    assert _recover(model, model.init(jax.random.key(0)), test.images, 300, 0.05) > 0.9
    assert _recover(model, state.variables, test.images, 300, 0.05) > 0.9
