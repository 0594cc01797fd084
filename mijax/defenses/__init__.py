"""Defenses: optax-like NamedTuples of pure functions (see `base.Defense`), composed with `chain`."""

from mijax.defenses.base import Defense, LossInputs, chain, identity, stack
from mijax.defenses.dropout import dropout
from mijax.defenses.noise import gaussian_noise, laplace_noise
from mijax.defenses.topk import topk

__all__ = ["Defense", "LossInputs", "chain", "identity", "stack", "dropout", "gaussian_noise",
           "laplace_noise", "topk"]
