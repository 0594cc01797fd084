import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mijax.attacks.priors import total_variation
from mijax.optim import torch_amsgrad


def _tv_numpy(x, variant):
    out = []
    for image in np.asarray(x, np.float64):
        h, w, c = image.shape
        if variant == "code":
            dv = [(image[i + 1, j, k] - image[i, j, k]) ** 2 for i in range(h - 1) for j in range(w) for k in range(c)]
            dh = [(image[i, j + 1, k] - image[i, j, k]) ** 2 for i in range(h) for j in range(w - 1) for k in range(c)]
            out.append(np.mean(dv) + np.mean(dh))
        else:
            total = 0.0
            for i in range(h - 1):
                for j in range(w - 1):
                    for k in range(c):
                        a = image[i + 1, j, k] - image[i, j, k]
                        b = image[i, j + 1, k] - image[i, j, k]
                        total += np.sqrt(a * a + b * b + 1e-8)
            out.append(total)
    return np.array(out)


@pytest.mark.parametrize("variant", ["code", "paper"])
def test_total_variation_matches_numpy_loops(variant):
    x = jax.random.uniform(jax.random.key(0), (3, 6, 5, 2))
    np.testing.assert_allclose(total_variation(x, variant=variant), _tv_numpy(x, variant), rtol=1e-5)


def test_total_variation_unknown_variant():
    with pytest.raises(ValueError, match="expected variant"):
        total_variation(jnp.zeros((1, 4, 4, 1)), variant="l1")


def _torch_amsgrad_numpy(grads, lr, eps, b1=0.9, b2=0.999, legacy=False):
    """PyTorch's Adam(amsgrad=True) step rule, written out (`legacy`: PyTorch 1.0-1.2's `adam.py`)."""
    p, m, v, vmax = 0.0, 0.0, 0.0, 0.0
    path = []
    for t, g in enumerate(grads, 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        vmax = max(vmax, v)
        if legacy:
            p = p - lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(vmax) + eps)
        else:
            p = p - lr / (1 - b1 ** t) * m / (np.sqrt(vmax) / np.sqrt(1 - b2 ** t) + eps)
        path.append(p)
    return np.array(path)


@pytest.mark.parametrize("legacy", [False, True])
def test_torch_amsgrad_matches_pytorch_rule(legacy):
    grads = np.array([1.0, -0.5, 2.0, 0.1, 0.1, -3.0, 0.0, 0.5, 1e-3, 1e-3])
    path = _path(torch_amsgrad(0.1, eps=1e-3, legacy_eps=legacy), grads)
    np.testing.assert_allclose(path, _torch_amsgrad_numpy(grads, 0.1, 1e-3, legacy=legacy), rtol=1e-5)
    # and differs from optax.amsgrad, which takes the max of the bias-corrected moment
    assert not np.allclose(path, _path(optax.amsgrad(0.1, eps=1e-3), grads), rtol=1e-4)


def test_legacy_eps_takes_smaller_first_steps_on_small_gradients():
    # effective eps 1e-3/√(1−0.999) = 3.2e-2 at step 1: a gradient of 1e-3 moves 0.1·1e-3/(1e-3 + 3.2e-2)
    grads = np.full(3, 1e-3)
    current, legacy = (_path(torch_amsgrad(0.1, eps=1e-3, legacy_eps=flag), grads) for flag in (False, True))
    np.testing.assert_allclose(current[0], -0.1 * 1e-3 / (1e-3 + 1e-3), rtol=1e-5)
    np.testing.assert_allclose(legacy[0], -0.1 * 1e-3 / (1e-3 + 1e-3 / np.sqrt(1e-3)), rtol=1e-5)


def _path(opt, grads):
    params = jnp.zeros(())
    state = opt.init(params)
    out = []
    for g in grads:
        updates, state = opt.update(jnp.float32(g), state, params)
        params = optax.apply_updates(params, updates)
        out.append(float(params))
    return out
