"""Random erasing (`mijax.defenses.erasing`) against a NumPy transcription of torchvision's
`RandomErasing` (forward + `get_params`), fed the same uniform draws."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mijax import defenses, pipeline
from mijax.attacks.released import ReleasedClassifier
from mijax.data.transforms import Normalization
from mijax.defenses.erasing import box_mask, erasing_boxes, erasing_draws
from mijax.models import lenet


def _key(seed):
    return jax.random.key(seed, impl="rbg")   # XLA-CPU compiles threefry slowly for every new shape


def torchvision_box(draws, height, width, *, p, scale, ratio, max_attempts=10):
    """torchvision.transforms.RandomErasing: `if torch.rand(1) < p`, then `get_params` (a loop over
    attempts, `int(round(math.sqrt(...)))`, `torch.randint(0, H - h + 1)`), here from given uniforms."""
    gate, area_u, ratio_u, row_u, col_u = (np.asarray(d, np.float32) for d in draws)
    if not gate < p:
        return None
    total = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for attempt in range(max_attempts):
        erase_area = total * np.float32(scale[0] + (scale[1] - scale[0]) * area_u[attempt])
        aspect_ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * float(ratio_u[attempt]))
        h = int(round(math.sqrt(erase_area * aspect_ratio)))
        w = int(round(math.sqrt(erase_area / aspect_ratio)))
        if not (h < height and w < width):
            continue
        i = min(int(math.floor(float(row_u[attempt]) * (height - h + 1))), height - h)
        j = min(int(math.floor(float(col_u[attempt]) * (width - w + 1))), width - w)
        return i, j, h, w
    return None  # no attempt fits: the image is returned unchanged


def reference_erase(images, key, *, p, scale, ratio, fill, max_attempts=10):
    out = np.array(images, copy=True)
    draws = jax.tree.map(np.asarray, jax.jit(jax.vmap(lambda k: erasing_draws(k, max_attempts)))(
        jax.random.split(key, len(images))))
    for n in range(len(images)):
        box = torchvision_box([d[n] for d in draws], *images.shape[1:3], p=p, scale=scale, ratio=ratio,
                              max_attempts=max_attempts)
        if box is not None:
            i, j, h, w = box
            out[n, i:i + h, j:j + w, :] = fill
    return out


@pytest.mark.parametrize("shape, scale, ratio, p", [
    ((28, 28, 1), (0.1, 0.4), (1.0, 1.0), 1.0),        # MIDRE on MNIST
    ((32, 32, 3), (0.1, 0.8), (1.0, 1.0), 0.7),        # the wider area range, some images kept
    ((12, 40, 2), (0.1, 0.4), (0.3, 3.3), 1.0),        # non-square image, torchvision's default ratios
])
def test_erase_matches_torchvision_for_fixed_keys(shape, scale, ratio, p):
    images = np.asarray(jax.random.uniform(_key(1), (64, *shape)))
    fill = np.linspace(-0.5, 0.5, shape[-1]).astype(np.float32)
    key = _key(7)
    got = np.asarray(defenses.erase(images, key, p=p, area=scale, aspect=ratio, fill=fill))
    want = reference_erase(images, key, p=p, scale=scale, ratio=ratio, fill=fill)
    np.testing.assert_array_equal(got, want)


def _sides(n, height, width, **kw):
    boxes = erasing_boxes(_key(3), n, height, width, **kw)
    return jax.tree.map(np.asarray, boxes)


def test_erased_area_follows_the_uniform_range_and_regions_are_squares():
    n, side = 20000, 28
    boxes = _sides(n, side, side, p=1.0, area=(0.1, 0.4))
    assert boxes.erased.all()                             # p = 1 erases every image
    np.testing.assert_array_equal(boxes.height, boxes.width)   # aspect (1, 1): squares
    # the side is round(√(a·784)), a ~ U[0.1, 0.4]: its exact law vs the counts (chi-square, 5% level)
    sides = np.arange(1, side)
    edges_low = np.clip((sides - 0.5) ** 2 / side ** 2, 0.1, 0.4)
    edges_high = np.clip((sides + 0.5) ** 2 / side ** 2, 0.1, 0.4)
    probs = (edges_high - edges_low) / 0.3
    keep = probs > 0
    expected = n * probs[keep]
    observed = np.array([(boxes.height == s).sum() for s in sides[keep]])
    assert observed.sum() == n
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    assert len(expected) == 10 and chi2 < 21.7, chi2   # 99% quantile of chi-square, 9 dof: 21.7; measured 5.2
    area = boxes.height.astype(float) ** 2 / side ** 2
    assert abs(area.mean() - 0.25) < 0.005 and area.min() >= (5.5 ** 2) / 784
    # the corners are uniform over the 28 − s + 1 positions: the top's mean is (28 − s)/2
    np.testing.assert_allclose(np.mean(boxes.top / (side - boxes.height)), 0.5, atol=0.01)
    # the mask of each image is the square: s² pixels, spanning s rows and s columns
    mask = np.asarray(box_mask(jax.tree.map(lambda a: a[:50], boxes), side, side))
    for m, s in zip(mask, boxes.height[:50]):
        rows, cols = np.nonzero(m)
        assert m.sum() == s * s and np.ptp(rows) + 1 == s and np.ptp(cols) + 1 == s


def test_p_zero_erases_nothing_and_p_one_everything():
    images = jnp.ones((32, 16, 16, 1))
    assert np.array_equal(defenses.erase(images, _key(0), p=0.0, area=(0.1, 0.4), fill=0.0), images)
    out = np.asarray(defenses.erase(images, _key(0), p=1.0, area=(0.1, 0.4), fill=0.0))
    assert (out.reshape(32, -1).min(axis=1) == 0).all()


def test_max_attempts_rule_on_non_square_images_and_impossible_ranges():
    # 8×32, a ∈ [0.3, 0.4]: side round(√(a·256)) ∈ {9, 10} >= 8 never fits: no image is erased
    boxes = _sides(500, 8, 32, p=1.0, area=(0.3, 0.4))
    assert not boxes.erased.any()
    # 12×40, a ∈ [0.1, 0.4]: side round(√(a·480)) ∈ [7, 14] fits when < 12, i.e. a < 11.5²/480 = 0.2755;
    # an attempt fails with probability q = (0.4 − 0.2755)/0.3 and all 10 fail with q¹⁰
    boxes = _sides(20000, 12, 40, p=1.0, area=(0.1, 0.4))
    q = (0.4 - 11.5 ** 2 / 480) / 0.3
    np.testing.assert_allclose(1 - boxes.erased.mean(), q ** 10, atol=0.003)
    assert boxes.height[boxes.erased].max() == 11
    # with a single attempt, images are left unerased with probability q
    boxes = _sides(20000, 12, 40, p=1.0, area=(0.1, 0.4), max_attempts=1)
    np.testing.assert_allclose(1 - boxes.erased.mean(), q, atol=0.012)


def test_the_defense_erases_only_in_training_and_in_normalised_space():
    model = lenet(cut="relu2", num_classes=5)
    norm = model.normalization
    defense = defenses.random_erasing(fill=(0.485,))
    state = defense.init(_key(0), model.defense_spec())
    # the fill is the normalised-space constant: its pixel value denormalises to it
    np.testing.assert_allclose(state["fill"], 0.485 * np.asarray(norm.std) + np.asarray(norm.mean), rtol=1e-6)
    x = jax.random.uniform(_key(2), (8, 28, 28, 1))
    variables = model.init(_key(0))
    run = jax.jit(lambda state, train, d: pipeline.run(model, variables, x, defense=d, defense_state=state,
                                                       key=_key(5), train=train), static_argnums=(1, 2))
    clean = run((), False, None)
    evaluated = run(state, False, defense)
    np.testing.assert_array_equal(evaluated.images, x)                # never at inference
    np.testing.assert_array_equal(evaluated.logits, clean.logits)
    released = ReleasedClassifier.from_model(model, variables, defense=defense, defense_state=state)
    np.testing.assert_allclose(jax.jit(released.logits)(x), clean.logits, rtol=1e-5, atol=1e-6)
    trained = run(state, True, defense)
    changed = np.asarray(trained.images != x).reshape(8, -1)
    assert changed.any(axis=1).all()                                     # p = 1: every training image
    normalised = np.asarray(norm.normalize(trained.images))[np.asarray(trained.images != x)]
    np.testing.assert_allclose(normalised, 0.485, atol=1e-5)             # what the edge sees


def test_full_erasing_and_bad_settings():
    x = jnp.full((4000, 4, 4, 1), 0.5)
    defense = defenses.full_erasing(p=0.25, fill_space="pixel", fill=0.0)
    out = np.asarray(defense.input_transform(defense.init(), x, _key(0), train=True))
    whole = (out.reshape(len(out), -1) == 0).all(axis=1)
    assert abs(whole.mean() - 0.25) < 0.03 and np.all((out == 0) | (out == 0.5))
    with pytest.raises(ValueError, match="p"):
        defenses.random_erasing(p=1.5)
    with pytest.raises(ValueError, match="area"):
        defenses.random_erasing(area=(0.4, 0.1))
    with pytest.raises(ValueError, match="location"):
        defenses.random_erasing(location="corner")
    with pytest.raises(ValueError, match="fill"):   # the 3-channel reference fill on a grayscale model
        defenses.random_erasing().init(None, lenet().defense_spec())
    with pytest.raises(ValueError, match="normalization"):
        defenses.random_erasing(fill=(0.5,)).init()
    assert defenses.random_erasing(fill=(0.5,), normalization=Normalization((0.5,), (0.5,))).init()["fill"][0] == 0.75
