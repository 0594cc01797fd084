import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mijax import data, defenses, metrics
from mijax.attacks import BlackBox, InverseNetworkConfig, TrainedDecoder, WhiteBox, inverse_network, train_inverse_network
from mijax.attacks.attacker_data import attacker_images, noise_images
from mijax.attacks.learned_inversion import he2019_optimizer, query_dataset
from mijax.data.transforms import MNIST_HALF
from mijax.models import decoder_for, he2019_decoder, lenet
from mijax.nn import Layer, Linear, Sequential, pure
from mijax.optim import torch_amsgrad
from mijax.train import fit


@functools.cache
def trained_lenet(data_dir):
    """LeNet briefly trained on real MNIST (once per session; test_shadow.py shares it) and test data."""
    train = data.load("mnist", "train[:1024]", data_dir=data_dir)
    test = data.load("mnist", "test[:1010]", data_dir=data_dir)
    model = lenet(cut="conv1")
    state = fit(model, train.images, train.labels, optimizer=torch_amsgrad(1e-3, eps=1e-3), epochs=3,
                batch_size=32, key=jax.random.key(1), progress=False)
    return model, state.variables, test


@pytest.fixture(scope="module")
def victim(data_dir):
    """The victim cut at conv1; targets and the attacker's auxiliary data (disjoint test images)."""
    model, variables, test = trained_lenet(data_dir)
    return model, variables, test.images[:10], test.images[10:]


def _scores(x_hat, targets):
    return (float(np.mean(metrics.ssim(np.asarray(x_hat), targets))),
            float(np.mean(metrics.mse(np.asarray(x_hat), targets))))


def _beats_mean_image(x_hat, targets, aux, ssim_margin=0.3):
    ssim, mse = _scores(x_hat, targets)
    base_ssim, base_mse = _scores(np.broadcast_to(aux.mean(0), targets.shape), targets)
    assert ssim > base_ssim + ssim_margin and mse < 0.75 * base_mse, (ssim, mse, base_ssim, base_mse)


def test_paper_decoder_in_normalised_space_beats_the_mean_image(victim):
    model, variables, targets, aux = victim
    oracle = BlackBox.from_model(model, variables)
    config = InverseNetworkConfig(epochs=2, normalization=model.normalization)
    x_hat = inverse_network(oracle, oracle.query(targets), config=config, key=jax.random.key(2),
                            decoder=he2019_decoder("conv1", "mnist"), images=aux, progress=False)
    _beats_mean_image(x_hat, targets, aux)


def test_noise_queries_beat_the_mean_image(victim):
    model, variables, targets, aux = victim
    oracle = BlackBox.from_model(model, variables)
    noise = attacker_images("noise", num=1024, input_shape=model.input_shape,
                            normalization=model.normalization, key=jax.random.key(3))
    config = InverseNetworkConfig(epochs=2, normalization=model.normalization)
    x_hat = inverse_network(oracle, oracle.query(targets), config=config, key=jax.random.key(2),
                            decoder=he2019_decoder("conv1", "mnist"), images=noise, progress=False)
    _beats_mean_image(x_hat, targets, aux)


def test_generic_decoder_in_pixel_space_with_per_batch_queries_beats_the_mean_image(victim):
    model, variables, targets, aux = victim
    oracle = BlackBox.from_model(model, variables)
    decoder = decoder_for(model.feature_shape(), model.input_shape, width=16)   # sigmoid output
    x_hat = inverse_network(oracle, oracle.query(targets), config=InverseNetworkConfig(epochs=2, requery=True),
                            key=jax.random.key(2), decoder=decoder, images=aux, progress=False)
    _beats_mean_image(x_hat, targets, aux, ssim_margin=0.2)


# --- fast checks on a tiny linear oracle ---------------------------------------------------------------

A = np.asarray(jax.random.normal(jax.random.key(7), (16, 24)), np.float32) / 4


def _oracle():
    return BlackBox(lambda a, x, key: x.reshape(len(x), -1) @ a, input_shape=(4, 4, 1), state=jnp.asarray(A))


def _decoder():
    """Any `Pure` is a decoder; a linear map keeps these checks fast."""
    return Sequential((Layer("fc", pure(lambda rngs: Linear(24, 16, rngs=rngs))),
                       Layer("image", lambda h: h.reshape(-1, 4, 4, 1)))).as_pure()


def _images(n=64):
    return np.asarray(jax.random.uniform(jax.random.key(5), (n, 4, 4, 1)))


def test_query_dataset_batches_and_keys(victim):
    x = _images(10)
    z, images = query_dataset(_oracle(), x, batch_size=4)
    np.testing.assert_allclose(z, x.reshape(10, -1) @ A, rtol=1e-5)
    np.testing.assert_array_equal(images, x)

    model, variables, _, _ = victim
    noisy = BlackBox.from_model(model, variables, defense=defenses.gaussian_noise(sigma=1.0))
    mnist = np.asarray(jax.random.uniform(jax.random.key(1), (6, 28, 28, 1)))
    with pytest.raises(ValueError, match="expected a key"):
        query_dataset(noisy, mnist)
    z1, _ = query_dataset(noisy, mnist, batch_size=3, key=jax.random.key(0))
    clean = np.asarray(model.edge_apply(variables, mnist)[0])
    assert 0.8 < np.std(z1 - clean) < 1.2
    assert not np.allclose(z1[:3] - clean[:3], z1[3:] - clean[3:])   # fresh noise per batch


def test_attacker_images_settings():
    train, aux = _images(8), _images(6)
    np.testing.assert_array_equal(attacker_images("train", train_images=train), train)
    np.testing.assert_array_equal(attacker_images("auxiliary", auxiliary_images=aux, num=4), aux[:4])
    noise = attacker_images("noise", num=2000, input_shape=(4, 4, 1), normalization=MNIST_HALF,
                            key=jax.random.key(0))
    assert noise.shape == (2000, 4, 4, 1)
    # N(0,1) in the model's input space, unclipped: the edge normalises them back to the draws
    u = np.asarray(jax.random.normal(jax.random.key(0), (2000, 4, 4, 1)))
    np.testing.assert_allclose(MNIST_HALF.normalize(noise), u, rtol=1e-5, atol=1e-6)
    assert 0.3 < np.mean((noise < 0) | (noise > 1)) < 0.34    # P(|u| > 1) = 31.7 %
    with pytest.raises(ValueError, match="expected setting in"):
        attacker_images("public")
    with pytest.raises(ValueError, match="needs auxiliary_images"):
        attacker_images("auxiliary", train_images=train)
    with pytest.raises(ValueError, match="needs num, input_shape and key"):
        attacker_images("noise", num=4)
    with pytest.raises(ValueError, match="expected num >= 1"):
        noise_images(0, (4, 4, 1), key=jax.random.key(0))


@pytest.mark.parametrize("legacy", [True, False])
def test_schedule_halves_the_step_size_like_the_code(legacy):
    # PyTorch: AMSGrad with lr /= 2 after every 10th epoch; 3 steps per epoch, 25 epochs. The authors'
    # PyTorch 1.0 added eps before the step size's bias correction (the default, `legacy_eps`).
    steps_per_epoch, grads = 3, np.cos(np.arange(75) / 3.0)
    opt = he2019_optimizer(1e-3, eps=1e-3, halve_every=10, steps_per_epoch=steps_per_epoch, legacy_eps=legacy)
    param, state, path = jnp.zeros(()), None, []
    state = opt.init(param)
    for g in grads:
        update, state = opt.update(jnp.asarray(g, jnp.float32), state)
        param = param + update
        path.append(float(param))
    p, m, v, vmax, expected = 0.0, 0.0, 0.0, 0.0, []
    for t, g in enumerate(grads, 1):
        lr = 1e-3 * 0.5 ** ((t - 1) // steps_per_epoch // 10)
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        vmax = max(vmax, v)
        if legacy:
            p -= lr * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (np.sqrt(vmax) + 1e-3)
        else:
            p -= lr / (1 - 0.9 ** t) * m / (np.sqrt(vmax) / np.sqrt(1 - 0.999 ** t) + 1e-3)
        expected.append(p)
    np.testing.assert_allclose(path, expected, rtol=1e-4, atol=1e-8)


def test_per_batch_queries_equal_stored_pairs_for_a_deterministic_oracle():
    oracle, x = _oracle(), _images()
    config = InverseNetworkConfig(epochs=2, batch_size=16)
    z, _ = query_dataset(oracle, x)
    stored = train_inverse_network(_decoder(), z, x, config=config, key=jax.random.key(0), progress=False)
    live = train_inverse_network(_decoder(), lambda x, k: oracle.query(x, key=k), x, config=config,
                                 key=jax.random.key(0), progress=False)
    chex.assert_trees_all_close(live.variables, stored.variables, rtol=1e-5, atol=1e-6)
    noisy = train_inverse_network(_decoder(), z, x, config=config, key=jax.random.key(0), progress=False,
                                  transform=lambda z, k: z + jax.random.normal(k, z.shape))
    assert not np.allclose(noisy.variables["params"]["fc"]["linear"]["kernel"],
                           stored.variables["params"]["fc"]["linear"]["kernel"])


def test_resumes_from_checkpoints(tmp_path):
    oracle, x = _oracle(), _images()
    z, _ = query_dataset(oracle, x)
    config = InverseNetworkConfig(epochs=2, batch_size=16)
    uninterrupted = train_inverse_network(_decoder(), z, x, config=config, key=jax.random.key(0), progress=False)
    train_inverse_network(_decoder(), z, x, config=InverseNetworkConfig(epochs=1, batch_size=16),
                          key=jax.random.key(0), workdir=tmp_path, progress=False)   # "killed" after epoch 1
    resumed = train_inverse_network(_decoder(), z, x, config=config, key=jax.random.key(0), workdir=tmp_path,
                                    progress=False)
    chex.assert_trees_all_close(resumed.variables, uninterrupted.variables, rtol=1e-6, atol=1e-7)


def test_trained_decoder_decodes_and_is_jittable():
    oracle, x = _oracle(), _images()
    z, _ = query_dataset(oracle, x)
    trained = train_inverse_network(_decoder(), z, x, config=InverseNetworkConfig(epochs=1, batch_size=16,
                                    normalization=MNIST_HALF), key=jax.random.key(0), progress=False)
    x_hat = inverse_network(trained, z[:5])
    out, _ = trained.decoder.apply(trained.variables, z[:5])
    np.testing.assert_allclose(x_hat, np.clip(out * 0.5 + 0.5, 0, 1), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda z: inverse_network(trained, z))(z[:5]), x_hat, rtol=1e-6)
    full = inverse_network(oracle, z[:5], config=InverseNetworkConfig(epochs=1, batch_size=16,
                           normalization=MNIST_HALF), key=jax.random.key(0), decoder=_decoder(), images=x,
                           progress=False)
    np.testing.assert_allclose(full, x_hat, rtol=1e-5, atol=1e-6)


def test_bad_input():
    oracle, x = _oracle(), _images()
    z, _ = query_dataset(oracle, x)
    with pytest.raises(TypeError, match="expected a BlackBox oracle or a TrainedDecoder, got WhiteBox"):
        inverse_network(WhiteBox(lambda v, x: x, (), normalization=MNIST_HALF, input_shape=(4, 4, 1)), z, key=jax.random.key(0),
                        decoder=_decoder(), images=x)
    with pytest.raises(TypeError, match="expected a BlackBox oracle"):
        query_dataset(object(), x)
    with pytest.raises(ValueError, match=r"expected images of shape \[num, 4, 4, 1\]"):
        query_dataset(oracle, np.zeros((3, 5, 5, 1)))
    with pytest.raises(ValueError, match="needs decoder, images and key"):
        inverse_network(oracle, z, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"expected z_observed of shape \[batch, 24\]"):
        inverse_network(oracle, z[:, :5], key=jax.random.key(0), decoder=_decoder(), images=x)
    with pytest.raises(ValueError, match=r"expected features of shape \[64, ...\] matching images"):
        train_inverse_network(_decoder(), z[:10], x, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"expected the decoder to map features \(24,\) to images \(4, 4, 1\)"):
        train_inverse_network(decoder_for((24,), (8, 8, 1)), z, x, key=jax.random.key(0))
    with pytest.raises(ValueError, match="expected epochs >= 1"):
        train_inverse_network(_decoder(), z, x, config=InverseNetworkConfig(epochs=0), key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"expected config.batch_size in \[1, 64\]"):
        train_inverse_network(_decoder(), z, x, config=InverseNetworkConfig(batch_size=65), key=jax.random.key(0))
    trained = TrainedDecoder(_decoder(), _decoder().init(jax.random.key(0)))
    with pytest.raises(ValueError, match="used as is"):
        inverse_network(trained, z, images=x)
