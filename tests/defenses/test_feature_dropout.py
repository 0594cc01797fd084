"""mijax.defenses.feature_dropout: the formula against NumPy, and deployed dropout against rMLE."""

import numpy as np

from mijax.defenses.feature_dropout import dropout

from tests.defenses.helpers import Z, apply_features

def test_dropout_without_and_with_rescale():
    dropped = np.asarray(apply_features(dropout(rate=0.25)))
    kept = dropped != 0
    assert abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_array_equal(dropped[kept], np.asarray(Z)[kept])  # He et al.: no rescaling
    rescaled = np.asarray(apply_features(dropout(rate=0.25, rescale=True)))
    np.testing.assert_allclose(rescaled[kept], np.asarray(Z)[kept] / 0.75, rtol=1e-6)



def test_deployed_dropout_makes_rmle_worse_at_a_measured_accuracy_cost(digits_target):
    # measured (12-01): SSIM 0.963 -> 0.269, accuracy 0.944 -> 0.808
    clean = digits_target.attack(digits_target.variables)
    dropped = digits_target.attack(digits_target.variables, dropout(rate=0.6))
    assert dropped.ssim < clean.ssim - 0.4
    assert 0.7 < dropped.accuracy < clean.accuracy
