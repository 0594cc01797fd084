"""Transforms against NumPy references; jit/vmap use; bad input."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mijax import data


def _images(shape=(16, 6, 5, 3), seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


@pytest.mark.parametrize("norm", [data.IMAGENET, data.CIFAR10, data.MNIST_HALF,
                                  data.Normalization((0.1, 0.2, 0.3), (0.5, 2.0, 0.25))])
def test_normalize_denormalize(norm):
    x = _images()
    y = norm.normalize(x)
    expected = (x - np.asarray(norm.mean, np.float32)) / np.asarray(norm.std, np.float32)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(norm.denormalize(y), x, atol=1e-6)
    np.testing.assert_allclose(norm.normalize(norm.denormalize(x)), x, atol=1e-5)


def test_normalization_is_hashable_and_a_pytree():
    norm = data.Normalization([0.5, 0.25], np.array([0.5, 2.0]))
    assert norm == data.Normalization((0.5, 0.25), (0.5, 2.0)) and hash(norm) == hash(
        data.Normalization((0.5, 0.25), (0.5, 2.0)))
    x = _images((2, 3, 3, 2))
    as_argument = jax.jit(lambda n, x: n.normalize(x))(norm, x)
    as_static = jax.jit(lambda x, n: n.normalize(x), static_argnums=1)(x, norm)
    np.testing.assert_allclose(as_argument, as_static, rtol=1e-6)
    doubled = jax.tree.map(lambda v: 2 * v, norm)
    assert doubled == data.Normalization((1.0, 0.5), (1.0, 4.0))
    assert data.IMAGENET.mean == (0.485, 0.456, 0.406) and data.CIFAR10.std == (0.247, 0.243, 0.261)


def test_from_data():
    x = _images((10, 4, 4, 3)) * np.array([1.0, 0.5, 0.2], np.float32)
    norm = data.from_data(x)
    np.testing.assert_allclose(norm.mean, x.reshape(-1, 3).mean(0), rtol=1e-5)
    np.testing.assert_allclose(norm.std, x.reshape(-1, 3).std(0), rtol=1e-5)
    y = np.asarray(norm.normalize(x)).reshape(-1, 3)
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(0), 1, atol=1e-5)
    assert data.Normalization.from_data(x) == norm


def test_normalization_errors():
    with pytest.raises(ValueError, match=r"std > 0 for every channel, got std \(0.5, 0.0\)"):
        data.Normalization((0.5, 0.5), (0.5, 0.0))
    with pytest.raises(ValueError, match="std > 0"):
        data.Normalization((0.5,), (-1.0,))
    with pytest.raises(ValueError, match="same length"):
        data.Normalization((0.5, 0.5), (0.5,))
    with pytest.raises(ValueError, match=r"channels = 3, got shape \(2, 4, 4, 2\)"):
        data.IMAGENET.normalize(np.zeros((2, 4, 4, 2)))
    with pytest.raises(ValueError, match="std > 0"):
        data.from_data(np.ones((4, 2, 2, 1)))
    with pytest.raises(ValueError, match=r"images of shape \[batch, height, width, channels\]"):
        data.from_data(np.ones((2, 2, 1)))


def _bilinear_reference(x, height, width):
    """Half-pixel-centre bilinear upsampling with edge clamping, separable, in NumPy."""
    def axis(n_in, n_out):
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        low = np.floor(pos).astype(int)
        high = np.minimum(low + 1, n_in - 1)
        return low, high, pos - low
    (r0, r1, wr), (c0, c1, wc) = axis(x.shape[1], height), axis(x.shape[2], width)
    rows = x[:, r0] * (1 - wr)[None, :, None, None] + x[:, r1] * wr[None, :, None, None]
    return rows[:, :, c0] * (1 - wc)[None, None, :, None] + rows[:, :, c1] * wc[None, None, :, None]


def test_resize():
    x = _images((3, 8, 8, 2))
    y = data.resize(x, (16, 24))
    chex.assert_shape(y, (3, 16, 24, 2))
    np.testing.assert_allclose(y, _bilinear_reference(x, 16, 24), atol=1e-5)
    chex.assert_shape(data.resize(x, 4), (3, 4, 4, 2))  # shrinking (antialiased)
    np.testing.assert_allclose(data.resize(np.full((1, 8, 8, 1), 0.3), 5), 0.3, atol=1e-6)
    assert data.resize(np.zeros((1, 8, 8, 1), np.uint8), 4).dtype == jnp.float32
    with pytest.raises(ValueError, match=r"images of shape \[batch, .*got shape \(8, 8, 1\)"):
        data.resize(np.zeros((8, 8, 1)), 4)


def test_random_flip():
    x = _images((64, 5, 6, 2))
    key = jax.random.key(0)
    y = np.asarray(jax.jit(data.random_flip)(key, x))
    same = np.all(y == x, axis=(1, 2, 3))
    mirrored = np.all(y == x[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same | mirrored) and 10 < mirrored.sum() < 54
    np.testing.assert_array_equal(y, data.random_flip(key, x))  # same key, same flips
    assert not np.array_equal(y, data.random_flip(jax.random.key(1), x))
    with pytest.raises(ValueError, match="got shape"):
        data.random_flip(key, x[0])


@pytest.mark.parametrize("padding", [0, 1, 3])
def test_random_crop(padding):
    x = _images((48, 5, 7, 2))
    key = jax.random.key(0)
    y = np.asarray(jax.jit(functools.partial(data.random_crop, padding=padding))(key, x))
    chex.assert_shape(y, x.shape)
    padded = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = set()
    for i in range(len(x)):
        matches = [(r, c) for r in range(2 * padding + 1) for c in range(2 * padding + 1)
                   if np.array_equal(y[i], padded[i, r:r + 5, c:c + 7])]
        assert matches, f"image {i} is not a crop of its padded image"
        offsets.update(matches)
    assert len(offsets) > min(5, (2 * padding + 1) ** 2 - 1)  # crops move around
    np.testing.assert_array_equal(y, data.random_crop(key, x, padding=padding))


def test_random_crop_vmaps_over_keys():
    keys = jax.random.split(jax.random.key(0), 3)
    x = _images((4, 6, 6, 1))
    y = jax.vmap(lambda k: data.random_crop(k, x, padding=2))(keys)
    chex.assert_shape(y, (3, 4, 6, 6, 1))
    np.testing.assert_array_equal(y[1], data.random_crop(keys[1], x, padding=2))


def test_random_crop_errors():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="padding to be an int >= 0, got -1"):
        data.random_crop(key, np.zeros((1, 4, 4, 1)), padding=-1)
    with pytest.raises(ValueError, match="padding to be an int >= 0, got 1.5"):
        data.random_crop(key, np.zeros((1, 4, 4, 1)), padding=1.5)
    with pytest.raises(ValueError, match=r"got shape \(4, 4\)"):
        data.random_crop(key, np.zeros((4, 4)), padding=1)


def _rotate_numpy(image, degrees):
    """torchvision's nearest-neighbour rotation, one output pixel at a time."""
    height, width, _ = image.shape
    t = np.deg2rad(degrees)
    out = np.zeros_like(image)
    for r in range(height):
        for c in range(width):
            x, y = c + 0.5 - width / 2, r + 0.5 - height / 2
            src_c = int(np.round(x * np.cos(t) - y * np.sin(t) + width / 2 - 0.5))
            src_r = int(np.round(x * np.sin(t) + y * np.cos(t) + height / 2 - 0.5))
            if 0 <= src_r < height and 0 <= src_c < width:
                out[r, c] = image[src_r, src_c]
    return out


def test_rotate_matches_a_pixel_loop_and_rot90():
    x = _images((3, 7, 6, 2))
    angles = np.array([15.0, -11.0, 40.0], np.float32)
    y = np.asarray(jax.jit(data.rotate)(x, angles))
    for i, a in enumerate(angles):
        np.testing.assert_array_equal(y[i], _rotate_numpy(x[i], a))
    square = _images((2, 5, 5, 1))
    np.testing.assert_array_equal(data.rotate(square, 90.0), np.rot90(square, 1, axes=(1, 2)))  # counter-clockwise
    np.testing.assert_array_equal(data.rotate(square, 0.0), square)


def test_random_rotation_draws_angles_within_the_range():
    x = np.zeros((200, 9, 9, 1), np.float32)
    x[:, 4, 8] = 1.0                                 # one pixel on the right edge, mid-height
    y = np.asarray(data.random_rotation(jax.random.key(0), x, degrees=15.0))
    rows, cols = np.nonzero(y[..., 0].max(0))
    # a turn of at most 15 degrees moves it at most round(4·sin 15°) = 1 row up or down
    assert set(rows) <= {3, 4, 5} and len(set(rows)) == 3
    with pytest.raises(ValueError, match="expected degrees >= 0"):
        data.random_rotation(jax.random.key(0), x, degrees=-1.0)
