"""Metrics against slow, obvious references: NumPy loops, dm-pix and scikit-image."""

import functools

import chex
import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from sklearn.datasets import load_digits

from mijax import metrics

# ----------------------------------------------------------------------------------------------
# Test images
# ----------------------------------------------------------------------------------------------


def _random_pair(seed, shape):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=shape).astype(np.float32)
    x_hat = np.clip(x + rng.normal(scale=0.2, size=shape), 0, 1).astype(np.float32)
    return x_hat, x


@functools.lru_cache(maxsize=None)
def _digits_pair(channels, n=6, noise=0.15, seed=0):
    """Real images: sklearn's 8x8 digits upscaled to 32x32; blurred, noisy 'reconstructions'."""
    digits = load_digits().images.astype(np.float32) / 16.0  # [1797, 8, 8] in [0, 1]
    rng = np.random.default_rng(seed)
    picks = digits[: n * channels].reshape(n, channels, 8, 8).transpose(0, 2, 3, 1)
    x = np.asarray(jax.image.resize(picks, (n, 32, 32, channels), method="bilinear"))
    x = np.clip(x, 0.0, 1.0).astype(np.float32)
    blurred = np.asarray(jax.image.resize(picks, (n, 16, 16, channels), method="bilinear"))
    blurred = np.asarray(jax.image.resize(blurred, (n, 32, 32, channels), method="bilinear"))
    x_hat = np.clip(blurred + rng.normal(scale=noise, size=x.shape), 0.0, 1.0).astype(np.float32)
    x_hat.flags.writeable = False
    x.flags.writeable = False
    return x_hat, x


PAIRS = {
    "random_grey": lambda: _random_pair(0, (3, 24, 20, 1)),
    "random_rgb": lambda: _random_pair(1, (3, 16, 19, 3)),
    "digits_grey": lambda: _digits_pair(1),
    "digits_rgb": lambda: _digits_pair(3),
}

# ----------------------------------------------------------------------------------------------
# Plain NumPy loop references (float64)
# ----------------------------------------------------------------------------------------------


def _gaussian_window(size=11, sigma=1.5):
    t = np.arange(size) - size // 2
    g = np.exp(-(t**2) / (2 * sigma**2))
    w = np.outer(g, g)
    return w / w.sum()


def _ssim_loop_channel(a, b, window, *, pad, c1, c2, cov_norm=1.0):
    """SSIM map of one channel, window by window, after zero padding `pad` (0 = valid)."""
    a = np.pad(a.astype(np.float64), pad)
    b = np.pad(b.astype(np.float64), pad)
    k = window.shape[0]
    rows, cols = a.shape[0] - k + 1, a.shape[1] - k + 1
    out = np.empty((rows, cols))
    for i in range(rows):
        for j in range(cols):
            pa, pb = a[i : i + k, j : j + k], b[i : i + k, j : j + k]
            mu_a, mu_b = np.sum(window * pa), np.sum(window * pb)
            var_a = cov_norm * np.sum(window * (pa - mu_a) ** 2)
            var_b = cov_norm * np.sum(window * (pb - mu_b) ** 2)
            cov = cov_norm * np.sum(window * (pa - mu_a) * (pb - mu_b))
            out[i, j] = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
                (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
            )
    return out


def _ssim_loop(x_hat, x, *, pad):
    """Per-image SSIM with the Gaussian 11x11 window, C1 = 0.01^2, C2 = 0.03^2."""
    window = _gaussian_window()
    values = []
    for a, b in zip(x_hat, x):
        maps = [
            _ssim_loop_channel(a[..., c], b[..., c], window, pad=pad, c1=0.01**2, c2=0.03**2)
            for c in range(a.shape[-1])
        ]
        values.append(np.mean(maps))
    return np.array(values)


# ----------------------------------------------------------------------------------------------
# SSIM
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_canonical_ssim_matches_dm_pix_loop_and_skimage(name):
    x_hat, x = PAIRS[name]()
    got = np.asarray(metrics.ssim(x_hat, x))
    chex.assert_shape(got, (x.shape[0],))
    np.testing.assert_allclose(got, np.asarray(dm_pix.ssim(x_hat, x)), atol=1e-6)
    np.testing.assert_allclose(got, _ssim_loop(x_hat, x, pad=0), atol=2e-5)
    # scikit-image with Gaussian weights crops a 5-pixel border, i.e. keeps exactly the valid map.
    reference = [
        structural_similarity(a.astype(np.float64), b.astype(np.float64), gaussian_weights=True,
                              sigma=1.5, use_sample_covariance=False, data_range=1.0,
                              channel_axis=-1)
        for a, b in zip(x_hat, x)
    ]
    np.testing.assert_allclose(got, reference, atol=2e-5)


def test_canonical_ssim_identical_and_unrelated_images():
    x_hat, x = _digits_pair(3)
    np.testing.assert_allclose(metrics.ssim(x, x), 1.0, atol=1e-6)
    assert np.all(np.asarray(metrics.ssim(x_hat, x)) < 0.9)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_he2019_ssim_matches_skimage_compare_ssim_defaults(name):
    x_hat, x = PAIRS[name]()
    got = np.asarray(metrics.ssim(x_hat, x, compat="he2019"))
    reference = [
        structural_similarity(a.astype(np.float64), b.astype(np.float64), win_size=7,
                              data_range=float(a.max()) - float(a.min()), channel_axis=-1)
        for a, b in zip(x_hat, x)
    ]
    np.testing.assert_allclose(got, reference, atol=1e-5)


def test_he2019_data_range_comes_from_the_reconstruction():
    x_hat, x = _digits_pair(1, n=2)
    x_hat = 0.25 + 0.5 * x_hat  # narrower range in x_hat changes C1, C2 (but not x)
    got = np.asarray(metrics.ssim(x_hat, x, compat="he2019"))
    reference = [structural_similarity(a.astype(np.float64), b.astype(np.float64), win_size=7,
                                       data_range=float(a.max() - a.min()), channel_axis=-1)
                 for a, b in zip(x_hat, x)]
    np.testing.assert_allclose(got, reference, atol=1e-5)
    swapped = [structural_similarity(a.astype(np.float64), b.astype(np.float64), win_size=7,
                                     data_range=float(b.max() - b.min()), channel_axis=-1)
               for a, b in zip(x_hat, x)]
    assert np.max(np.abs(np.asarray(swapped) - got)) > 1e-3


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_cem_ssim_matches_zero_padded_loop(name):
    x_hat, x = PAIRS[name]()
    got = np.asarray(metrics.ssim(x_hat, x, compat="cem"))
    np.testing.assert_allclose(got, _ssim_loop(x_hat, x, pad=5), atol=2e-5)
    # The reference reports the mean over the whole batch of the zero-padded map.
    assert abs(float(np.mean(got)) - float(np.mean(_ssim_loop(x_hat, x, pad=5)))) < 2e-5


def test_cem_ssim_differs_from_canonical():
    x_hat, x = _digits_pair(1)
    canonical = np.asarray(metrics.ssim(x_hat, x))
    cem = np.asarray(metrics.ssim(x_hat, x, compat="cem"))
    assert np.max(np.abs(canonical - cem)) > 1e-3


def test_ssim_smallest_allowed_images():
    x_hat, x = _random_pair(2, (2, 11, 11, 2))
    np.testing.assert_allclose(metrics.ssim(x_hat, x), _ssim_loop(x_hat, x, pad=0), atol=2e-5)
    x_hat, x = _random_pair(3, (2, 7, 9, 1))
    reference = [structural_similarity(a.astype(np.float64), b.astype(np.float64), win_size=7,
                                       data_range=float(a.max() - a.min()), channel_axis=-1)
                 for a, b in zip(x_hat, x)]
    np.testing.assert_allclose(metrics.ssim(x_hat, x, compat="he2019"), reference, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# MSE and PSNR
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_mse_and_psnr_match_numpy_and_skimage(name):
    x_hat, x = PAIRS[name]()
    diff = x_hat.astype(np.float64) - x.astype(np.float64)
    expected_mse = np.array([np.mean(d**2) for d in diff])
    np.testing.assert_allclose(metrics.mse(x_hat, x), expected_mse, rtol=1e-5)
    expected_psnr = [peak_signal_noise_ratio(b.astype(np.float64), a.astype(np.float64),
                                             data_range=1.0) for a, b in zip(x_hat, x)]
    np.testing.assert_allclose(metrics.psnr(x_hat, x), expected_psnr, atol=1e-4)
    np.testing.assert_allclose(metrics.psnr_of_mean_mse(x_hat, x),
                               10 * np.log10(1 / np.mean(expected_mse)), atol=1e-4)
    assert float(metrics.psnr_of_mean_mse(x_hat, x)) <= float(np.mean(expected_psnr)) + 1e-4


def test_psnr_of_identical_images_is_the_floor():
    x = _digits_pair(1, n=2)[1]
    got = np.asarray(metrics.psnr(x, x))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, 100.0, atol=1e-3)  # 10 log10(1 / 1e-10)
    np.testing.assert_allclose(metrics.psnr(x, x, min_mse=1e-6), 60.0, atol=1e-3)
    assert np.isfinite(float(metrics.psnr_of_mean_mse(x, x)))
    assert np.isfinite(float(metrics.batch_psnr(x, x)))


@pytest.mark.parametrize("n, batch_size", [(10, 4), (10, 256), (8, 4), (1, 1), (7, 1)])
def test_batch_psnr_matches_numpy_loop(n, batch_size):
    x_hat, x = _random_pair(4, (n, 8, 8, 3))
    total, weights = 0.0, 0
    for start in range(0, n, batch_size):
        a = x_hat[start : start + batch_size].astype(np.float64)
        b = x[start : start + batch_size].astype(np.float64)
        total += len(a) * 10 * np.log10(1.0 / np.mean((a - b) ** 2))
        weights += len(a)
    got = metrics.batch_psnr(x_hat, x, batch_size=batch_size)
    chex.assert_shape(got, ())
    np.testing.assert_allclose(got, total / weights, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# Accuracy
# ----------------------------------------------------------------------------------------------


def test_accuracy_and_top_k_match_numpy():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(50, 10)).astype(np.float32)
    labels = rng.integers(0, 10, size=50)
    got = metrics.accuracy(logits, labels)
    chex.assert_shape(got, (50,))
    np.testing.assert_array_equal(got, (np.argmax(logits, -1) == labels).astype(np.float32))
    for k in (1, 3, 5, 10):
        ranked = np.argsort(-logits, axis=-1)[:, :k]
        expected = np.array([label in row for label, row in zip(labels, ranked)], np.float32)
        np.testing.assert_array_equal(metrics.top_k_accuracy(logits, labels, k=k), expected)
    np.testing.assert_array_equal(metrics.top_k_accuracy(logits, labels, k=10), 1.0)


# ----------------------------------------------------------------------------------------------
# Reconstruction metrics, jit, vmap, grad
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compat", metrics.COMPAT_MODES)
def test_reconstruction_metrics(compat):
    x_hat, x = _digits_pair(3, n=4)
    scores = metrics.reconstruction_metrics(x_hat, x, compat=compat)
    assert sorted(scores) == ["mse", "psnr", "ssim"]
    for value in scores.values():
        chex.assert_shape(value, (4,))
    np.testing.assert_allclose(scores["mse"], metrics.mse(x_hat, x))
    np.testing.assert_allclose(scores["psnr"], metrics.psnr(x_hat, x))
    np.testing.assert_allclose(scores["ssim"], metrics.ssim(x_hat, x, compat=compat))


@pytest.mark.parametrize("compat", metrics.COMPAT_MODES)
def test_jit_vmap_and_grad(compat):
    x_hat, x = _digits_pair(3, n=4)
    eager = np.asarray(metrics.ssim(x_hat, x, compat=compat))
    jitted = jax.jit(metrics.ssim, static_argnames="compat")
    np.testing.assert_allclose(jitted(x_hat, x, compat=compat), eager, atol=1e-6)

    # vmap over a sweep axis (e.g. noise levels): [sweep, batch, height, width, channels].
    stacked = jnp.stack([jnp.asarray(x_hat), jnp.asarray(x)])
    swept = jax.jit(jax.vmap(lambda a: metrics.ssim(a, x, compat=compat)))(stacked)
    np.testing.assert_allclose(swept[0], eager, atol=1e-6)
    np.testing.assert_allclose(swept[1], 1.0, atol=1e-5)

    grad = jax.grad(lambda a: jnp.mean(metrics.ssim(a, x, compat=compat)))(jnp.asarray(x_hat))
    assert bool(jnp.all(jnp.isfinite(grad)))

    scores = jax.jit(metrics.reconstruction_metrics, static_argnames="compat")(x_hat, x,
                                                                                compat=compat)
    np.testing.assert_allclose(scores["ssim"], eager, atol=1e-6)
    for fn in (metrics.mse, metrics.psnr, metrics.psnr_of_mean_mse, metrics.batch_psnr):
        np.testing.assert_allclose(jax.jit(fn)(x_hat, x), fn(x_hat, x), rtol=1e-6)


def test_accuracy_under_jit_and_vmap():
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(3, 20, 5)).astype(np.float32)
    labels = rng.integers(0, 5, size=(3, 20))
    got = jax.jit(jax.vmap(metrics.accuracy))(logits, labels)
    np.testing.assert_array_equal(got, (np.argmax(logits, -1) == labels).astype(np.float32))
    top2 = jax.jit(jax.vmap(lambda lg, lb: metrics.top_k_accuracy(lg, lb, k=2)))(logits, labels)
    chex.assert_shape(top2, (3, 20))


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------

_X = np.full((10, 32, 32, 3), 0.5, np.float32)


@pytest.mark.parametrize("fn", [metrics.mse, metrics.psnr, metrics.psnr_of_mean_mse,
                                metrics.batch_psnr, metrics.ssim, metrics.reconstruction_metrics])
def test_shape_and_range_errors(fn):
    with pytest.raises(ValueError, match=r"expected x_hat of shape \[batch, height, width, "
                                         r"channels\] matching x \(10, 32, 32, 3\), "
                                         r"got \(10, 32, 32\)"):
        fn(_X[..., 0], _X)
    with pytest.raises(ValueError, match=r"expected x of shape \[batch, height, width, channels\], "
                                         r"got \(32, 32, 3\)"):
        fn(_X[0], _X[0])
    with pytest.raises(ValueError, match=r"matching x \(10, 32, 32, 3\), got \(10, 32, 32, 1\)"):
        fn(_X[..., :1], _X)
    with pytest.raises(ValueError, match=r"expected x_hat with values in \[0, 1\].*got values in "
                                         r"\[0\.5, 255\]"):
        fn(_with(_X, 255.0), _X)
    with pytest.raises(ValueError, match=r"expected x with values in \[0, 1\].*got values in "
                                         r"\[-0\.1, 0\.5\]"):
        fn(_X, _with(_X, -0.1))
    with pytest.raises(ValueError, match=r"expected x_hat with finite values"):
        fn(_with(_X, np.nan), _X)


def _with(x, value):
    x = np.array(x)
    x[0, 0, 0, 0] = value
    return x


def test_range_tolerance_and_integer_images():
    metrics.ssim(_with(_X, 1.0 + 1e-7), _with(_X, -1e-7))  # float rounding is tolerated
    with pytest.raises(ValueError, match=r"expected x_hat with values in \[0, 1\]"):
        metrics.mse((_X * 255).astype(np.uint8), _X)


def test_value_checks_are_skipped_under_jit():
    out = jax.jit(metrics.mse)(_with(_X, 2.0), _X)  # traced: only shapes can be checked
    assert float(out[0]) > 0


@pytest.mark.parametrize("compat, window", [("canonical", 11), ("cem", 11), ("he2019", 7)])
def test_images_smaller_than_the_window(compat, window):
    small = np.full((2, window - 1, 32, 1), 0.5, np.float32)
    message = (rf"at least {window}x{window} pixels.*{window}x{window} window.*"
               rf"got images of {window - 1}x32 pixels")
    with pytest.raises(ValueError, match=message):
        metrics.ssim(small, small, compat=compat)
    with pytest.raises(ValueError, match=message):
        metrics.reconstruction_metrics(small, small, compat=compat)
    narrow = np.full((2, 32, window - 1, 1), 0.5, np.float32)
    with pytest.raises(ValueError, match=rf"got images of 32x{window - 1} pixels"):
        metrics.ssim(narrow, narrow, compat=compat)


def test_unknown_compat():
    for fn in (metrics.ssim, metrics.reconstruction_metrics):
        with pytest.raises(ValueError,
                           match=r"expected compat to be one of .*'he2019'.*got 'siftfunnel'"):
            fn(_X, _X, compat="siftfunnel")


def test_bad_settings():
    with pytest.raises(ValueError, match=r"min_mse > 0"):
        metrics.psnr(_X, _X, min_mse=0.0)
    with pytest.raises(ValueError, match=r"batch_size to be an int >= 1, got 0"):
        metrics.batch_psnr(_X, _X, batch_size=0)
    with pytest.raises(ValueError, match=r"at least one example in x"):
        metrics.batch_psnr(_X[:0], _X[:0])


def test_accuracy_errors():
    logits = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"expected logits of shape \[batch, classes\] matching "
                                         r"labels \(5,\), got \(4, 3\)"):
        metrics.accuracy(logits, np.zeros(5, np.int32))
    with pytest.raises(ValueError, match=r"expected labels of shape \[batch\].*got \(4, 1\)"):
        metrics.accuracy(logits, np.zeros((4, 1), np.int32))
    with pytest.raises(ValueError, match=r"matching labels \(4,\), got \(4,\)"):
        metrics.accuracy(np.zeros(4), np.zeros(4, np.int32))
    with pytest.raises(ValueError, match=r"expected integer labels"):
        metrics.accuracy(logits, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"labels in \[0, 3\).*got labels in \[0, 3\]"):
        metrics.accuracy(logits, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"k to be an int in \[1, 3\].*got 4"):
        metrics.top_k_accuracy(logits, np.zeros(4, np.int32), k=4)
    with pytest.raises(ValueError, match=r"got 0"):
        metrics.top_k_accuracy(logits, np.zeros(4, np.int32), k=0)
