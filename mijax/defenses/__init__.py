"""Defenses: optax-like NamedTuples of pure functions (see `base.Defense`), composed with `chain`."""

from mijax.defenses.base import Defense, DefenseSpec, LossInputs, Trainable, chain, identity, stack
from mijax.defenses.feature_dropout import dropout
from mijax.defenses.noise import gaussian_noise, laplace_noise
from mijax.defenses.topk_pruning import topk

__all__ = ["Defense", "DefenseSpec", "LossInputs", "Trainable", "chain", "identity", "stack", "dropout", "gaussian_noise",
           "laplace_noise", "topk"]

from mijax.defenses.conditional_entropy import (cem, cem_loss, cem_with_noise, log_det_monitor, lr_coupling_scale,  # noqa: E402
                                mixture_entropy_bound_term)
from mijax.defenses.kmeans import Mixture, fit_mixture  # noqa: E402

__all__ += ["Mixture", "cem", "cem_loss", "cem_with_noise", "fit_mixture", "log_det_monitor",
            "lr_coupling_scale", "mixture_entropy_bound_term"]

from mijax.defenses.adversarial import adversarial_decoder, deep_obfuscator, upsampling_decoder  # noqa: E402
from mijax.defenses.decorrelation import distance_correlation, nopeek  # noqa: E402

__all__ += ["adversarial_decoder", "deep_obfuscator", "distance_correlation", "nopeek",
            "upsampling_decoder"]
