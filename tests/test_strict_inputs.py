"""Bad inputs to public functions: each is a ValueError naming the argument, never a silent NaN,
a clamp, a crash inside XLA/NumPy or a silent resume."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mijax import data, defenses, metrics, nn
from mijax.attacks import RMLEConfig, WhiteBox, rmle
from mijax.defenses import Mixture
from mijax.defenses.conditional_entropy import cem_loss
from mijax.models import digits_cnn
from mijax.train import evaluate, fit

MODEL = digits_cnn(image_size=16)
FIT = dict(optimizer=optax.sgd(0.01), epochs=1, batch_size=8, key=jax.random.key(0), progress=False)


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(16, 16, 16, 1)).astype(np.float32)
    labels = (np.arange(16) % 10).astype(np.int32)
    return images, labels, MODEL.init(jax.random.key(0))


def _nan_images(images):
    bad = images.copy()
    bad[3, 2, 2, 0] = np.nan
    return bad


def _mixture(num_classes=3, dim=4):
    return Mixture(means=jnp.zeros((num_classes, 2, dim)), weights=jnp.full((num_classes, 2), 0.5),
                   variances=jnp.ones((num_classes, 2)), counts=jnp.ones((num_classes, 2), jnp.int32))


CASES = {
    "fit on NaN images": (lambda x, y, v: fit(MODEL, _nan_images(x), y, **FIT), "expected finite images"),
    "fit on labels outside [0, C)": (lambda x, y, v: fit(MODEL, x, y + 5, **FIT), r"expected labels in \[0, 10\)"),
    "fit on float labels": (lambda x, y, v: fit(MODEL, x, y.astype(np.float32), **FIT), "expected integer labels"),
    "fit with epochs=0": (lambda x, y, v: fit(MODEL, x, y, **{**FIT, "epochs": 0}), "expected epochs >= 1"),
    "cem_loss on labels outside the mixture's classes": (
        lambda x, y, v: cem_loss(jnp.ones((4, 4)), jnp.array([0, 1, 2, 3]), _mixture(), sigma=0.1,
                                 samples_per_class=10), r"expected labels in \[0, 3\)"),
    "cloud_apply on features of the wrong shape": (
        lambda x, y, v: MODEL.cloud_apply(v, jnp.ones((2, 5, 5, 8))), r"expected z of shape \[batch, 8, 8, 8\]"),
    "ssim on an empty batch": (
        lambda x, y, v: metrics.ssim(np.zeros((0, 16, 16, 1)), np.zeros((0, 16, 16, 1))),
        "expected at least one example in x"),
    "rmle on an empty batch": (
        lambda x, y, v: rmle(WhiteBox.from_model(MODEL, v), jnp.zeros((0, 8, 8, 8))),
        "expected at least one example in z_observed"),
    "rmle with a negative learning rate": (
        lambda x, y, v: rmle(WhiteBox.from_model(MODEL, v), jnp.zeros((1, 8, 8, 8)),
                             config=RMLEConfig(learning_rate=-0.1)), "expected learning_rate > 0"),
    "rmle on NaN features": (
        lambda x, y, v: rmle(WhiteBox.from_model(MODEL, v), jnp.full((1, 8, 8, 8), jnp.nan)),
        "expected finite z_observed"),
    "evaluate with mismatched labels": (
        lambda x, y, v: evaluate(MODEL, v, x, y[:5], key=jax.random.key(0)), r"expected labels of shape \[16\]"),
    "evaluate on images out of [0, 1]": (
        lambda x, y, v: evaluate(MODEL, v, 255 * x, y, key=jax.random.key(0)), r"expected images in \[0, 1\]"),
    "evaluate a sweep without its stacked state": (
        lambda x, y, v: evaluate(MODEL, v, x, y, defense=defenses.gaussian_noise(sigma=0.1), sweep="defense",
                                 key=jax.random.key(0)), "expected a stacked defense_state"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_value_error_naming_the_argument(case, small):
    call, match = CASES[case]
    with pytest.raises(ValueError, match=match):
        call(*small)


def test_max_pool_propagates_nan_like_reduce_window():
    x = jnp.zeros((1, 4, 4, 1)).at[0, 1, 1, 0].set(jnp.nan)
    pooled = nn.max_pool(x)
    assert bool(jnp.isnan(pooled[0, 0, 0, 0])) and not bool(jnp.isnan(pooled[0, 1, 1, 0]))


def test_evaluate_with_a_defense_defaults_to_its_initial_state(small):
    images, labels, variables = small
    noisy = evaluate(MODEL, variables, images, labels, defense=defenses.gaussian_noise(sigma=0.1),
                     key=jax.random.key(0))
    assert 0.0 <= float(noisy) <= 1.0


def test_workdir_of_another_run_is_not_resumed(small, tmp_path):
    images, labels, _ = small
    fit(MODEL, images, labels, **FIT, workdir=tmp_path)
    with pytest.raises(ValueError, match="batch_size differ"):
        fit(MODEL, images, labels, **{**FIT, "batch_size": 4}, workdir=tmp_path)
    with pytest.raises(ValueError, match="data differ"):
        fit(MODEL, images[::-1].copy(), labels, **FIT, workdir=tmp_path)
    resumed = fit(MODEL, images, labels, **{**FIT, "epochs": 2}, workdir=tmp_path)  # more epochs continue
    assert int(resumed.step) == 4


def test_corrupted_dataset_cache_names_the_folder_to_delete(tmp_path, monkeypatch):
    data.load("digits", "test")  # prepared in $MIJAX_TFDS_DIR
    from mijax.data import builders
    copy = tmp_path / "tfds"
    shutil.copytree(f"{builders.cache_dir()}/mijax_digits", copy / "mijax_digits")
    for record in copy.glob("mijax_digits/*/*test.array_record*"):
        record.write_bytes(record.read_bytes()[: record.stat().st_size // 2])
    monkeypatch.setenv("MIJAX_TFDS_DIR", str(copy))
    with pytest.raises(ValueError, match=r"mijax_digits/1\.0\.0 cannot be read .* delete that folder"):
        data.load("digits", "test")

