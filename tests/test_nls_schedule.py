"""Negative label smoothing's schedule against a transcription of the reference's `ls_scheduler`."""

import numpy as np
import pytest

from mijax import losses


def ls_scheduler(epoch, n_epochs):   # the reference (MIDRE / Struppek et al. code)
    if epoch < 50:
        return 0.0
    if epoch < 75:
        factor = 1 / (n_epochs - 50)
        return factor * (epoch + 1 - 50)
    return 1


def test_reference_schedule_matches_the_reference_code():
    schedule = losses.negative_smoothing_schedule(alpha=-0.05, steps_per_epoch=3, reference=True)
    steps = np.arange(0, 100 * 3)
    got = np.asarray(schedule(steps))
    want = np.array([-0.05 * ls_scheduler(s // 3, 100) for s in steps])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    assert np.isclose(got[74 * 3], -0.025) and np.isclose(got[75 * 3], -0.05)   # α/2 at 74, then the jump


def test_clean_ramp_and_bad_settings():
    schedule = losses.negative_smoothing_schedule(alpha=-0.1, steps_per_epoch=1, start_epoch=2, end_epoch=6)
    np.testing.assert_allclose(schedule(np.arange(8)), -0.1 * np.array([0, 0, 0, .25, .5, .75, 1, 1]), atol=1e-7)
    with pytest.raises(ValueError, match="start_epoch"):
        losses.negative_smoothing_schedule(alpha=-0.1, steps_per_epoch=1, start_epoch=5, end_epoch=5)
