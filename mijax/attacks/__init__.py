"""Attacks: pure functions `attack(knowledge, z_observed, *, config, key) -> x_hat`."""

from mijax.attacks.knowledge import BlackBox, QueryFree, WhiteBox
from mijax.attacks.priors import total_variation
from mijax.attacks.rmle import RMLEConfig, rmle, rmle_objective

__all__ = ["BlackBox", "QueryFree", "WhiteBox", "total_variation", "RMLEConfig", "rmle", "rmle_objective"]
