"""Task losses against NumPy loops."""

import jax
import numpy as np
import optax
import pytest

from mijax import losses

LOGITS = np.asarray(jax.random.normal(jax.random.key(0), (6, 5)), np.float64)
LABELS = np.array([0, 4, 2, 2, 1, 3])


def _smoothed_ce(logits, labels, eps):
    out = []
    for row, y in zip(logits, labels):
        log_p = row - np.log(np.sum(np.exp(row)))
        target = np.full(len(row), eps / len(row))
        target[y] += 1 - eps
        out.append(-np.sum(target * log_p))
    return np.array(out)


@pytest.mark.parametrize("eps", [0.0, 0.25, -0.05])
def test_label_smoothing_matches_loop(eps):
    got = losses.label_smoothing(epsilon=eps)(LOGITS.astype(np.float32), LABELS, 0)
    np.testing.assert_allclose(got, _smoothed_ce(LOGITS, LABELS, eps), rtol=1e-5)
    if eps == 0:
        np.testing.assert_allclose(got, losses.cross_entropy(LOGITS.astype(np.float32), LABELS), rtol=1e-6)


def test_cross_entropy_is_optax():
    np.testing.assert_allclose(losses.cross_entropy(LOGITS, LABELS),
                               optax.softmax_cross_entropy_with_integer_labels(LOGITS, LABELS), rtol=1e-6)


def test_negative_smoothing_schedules():
    clean = losses.negative_smoothing_schedule(alpha=-0.1, steps_per_epoch=10)
    reference = losses.negative_smoothing_schedule(alpha=-0.1, steps_per_epoch=10, reference=True)
    # the reference ramp is ls_scheduler's α·(e + 1 − 50)/(100 − 50) (tests/test_nls_schedule.py)
    for epoch, want_clean, want_reference in [(0, 0, 0), (49, 0, 0), (50, 0, -0.002), (60, -0.04, -0.022),
                                              (74, -0.096, -0.05), (75, -0.1, -0.1), (99, -0.1, -0.1)]:
        np.testing.assert_allclose(float(clean(epoch * 10 + 9)), want_clean, atol=1e-7)
        np.testing.assert_allclose(float(reference(epoch * 10)), want_reference, atol=1e-7)
    scheduled = losses.label_smoothing(epsilon=clean)
    np.testing.assert_allclose(scheduled(LOGITS, LABELS, 600), _smoothed_ce(LOGITS, LABELS, -0.04), rtol=1e-5)


def test_bad_settings():
    with pytest.raises(ValueError, match="epsilon"):
        losses.label_smoothing(epsilon=1.5)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        losses.negative_smoothing_schedule(alpha=-0.1, steps_per_epoch=0)
