"""mijax.defenses.topk_pruning: the formula against NumPy, and deployed pruning against rMLE."""

import jax
import numpy as np

from mijax.defenses.topk_pruning import topk

from tests.defenses.helpers import apply_features

def test_topk_matches_numpy():
    z = np.asarray(jax.random.normal(jax.random.key(3), (4, 3, 3, 2)))
    out = np.asarray(apply_features(topk(prune_ratio=0.5), z=z))
    flat, ref = z.reshape(4, -1), z.reshape(4, -1).copy()
    for i in range(4):
        ref[i, np.argsort(np.abs(flat[i]))[:9]] = 0
    np.testing.assert_array_equal(out.reshape(4, -1), ref)
    batch = np.asarray(apply_features(topk(prune_ratio=0.25, reference_compatible=True), z=z)).ravel()
    expected = z.ravel().copy()
    expected[np.argsort(z.ravel())[:18]] = 0  # smallest signed values over the whole batch
    np.testing.assert_array_equal(batch, expected)



def test_deployed_pruning_makes_rmle_worse_at_a_measured_accuracy_cost(digits_target):
    # measured (12-01): SSIM 0.963 -> 0.538, accuracy 0.944 -> 0.806
    clean = digits_target.attack(digits_target.variables)
    pruned = digits_target.attack(digits_target.variables, topk(prune_ratio=0.8))
    assert pruned.ssim < clean.ssim - 0.25
    assert 0.7 < pruned.accuracy < clean.accuracy
