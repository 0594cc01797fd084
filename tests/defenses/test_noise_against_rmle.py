"""Deployed feature noise (He et al., IoT-J 2020) against white-box rMLE on the real digits.

Inference-time defenses: the shared `digits_target` (trained without noise) is attacked as deployed,
with the noise added to the transmitted z ∈ (0,1)^{8×8×8}, and its accuracy is measured with the
same noise.
"""

import pytest

from mijax import defenses


@pytest.fixture(scope="module")
def clean(digits_target):
    return digits_target.attack(digits_target.variables)


def test_deployed_gaussian_noise_makes_rmle_worse_at_a_measured_accuracy_cost(digits_target, clean):
    # measured (12-01): SSIM 0.963 -> 0.837 (σ 0.2) -> 0.547 (σ 0.5);
    # accuracy 0.944 -> 0.928 (σ 0.2) -> 0.878 (σ 0.5)
    mild = digits_target.attack(digits_target.variables, defenses.gaussian_noise(sigma=0.2))
    noisy = digits_target.attack(digits_target.variables, defenses.gaussian_noise(sigma=0.5))
    assert noisy.ssim < clean.ssim - 0.2
    assert noisy.ssim < mild.ssim - 0.15  # more noise, a worse attack
    assert 0.75 < noisy.accuracy < clean.accuracy


def test_deployed_laplace_noise_makes_rmle_worse_at_a_measured_accuracy_cost(digits_target, clean):
    # measured (12-01, scale b 0.4, std √2·b ≈ 0.57): SSIM 0.963 -> 0.631, accuracy 0.944 -> 0.875
    noisy = digits_target.attack(digits_target.variables, defenses.laplace_noise(scale=0.4))
    assert noisy.ssim < clean.ssim - 0.15
    assert 0.75 < noisy.accuracy < clean.accuracy
