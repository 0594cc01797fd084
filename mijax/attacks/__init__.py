"""Attacks and their configs: `attack(knowledge, z_observed, *, config, key, ...) -> x_hat`.

The knowledge types (`WhiteBox`, `BlackBox`, `QueryFree`) say what each threat level sees. Learned
attacks train with `train_*` and return a trained object (`TrainedDecoder`, `TrainedShadow`) that
the attack function decodes with. Building blocks stay in their modules: `priors.total_variation`,
`mle_inversion.rmle_objective`, `gan.gradient_penalty`, `learned_inversion.query_dataset`, and the
attacker's data of the papers' settings in `attacker_data`.
"""

from mijax.attacks.knowledge import BlackBox, QueryFree, WhiteBox
from mijax.attacks.mle_inversion import RMLEConfig, rmle
from mijax.attacks.learned_inversion import (InverseNetworkConfig, TrainedDecoder, inverse_network,
                                             train_inverse_network)
from mijax.attacks.shadow import ShadowConfig, TrainedShadow, he2019_shadow, shadow_attack, train_shadow
from mijax.attacks.noise_aware_decoder import DecoderAttackConfig, decoder_attack, train_decoder_attack
from mijax.attacks.gan import GanConfig, gan_finetune

__all__ = ["BlackBox", "QueryFree", "WhiteBox", "RMLEConfig", "rmle", "InverseNetworkConfig", "TrainedDecoder",
           "inverse_network", "train_inverse_network", "ShadowConfig", "TrainedShadow", "he2019_shadow",
           "shadow_attack", "train_shadow", "DecoderAttackConfig", "decoder_attack", "train_decoder_attack",
           "GanConfig", "gan_finetune"]

from mijax.attacks.released import ReleasedClassifier  # noqa: E402
from mijax.attacks.gmi import GmiConfig, InversionResult, PriorConfig, TrainedPrior, gmi_attack, train_gmi_prior  # noqa: E402
from mijax.attacks.kedmi import KedmiConfig, KedmiPriorConfig, kedmi_attack, train_kedmi_prior  # noqa: E402
from mijax.attacks.evaluation import inversion_scores, knn_distance  # noqa: E402

__all__ += ["ReleasedClassifier", "GmiConfig", "InversionResult", "PriorConfig", "TrainedPrior", "gmi_attack",
            "train_gmi_prior", "KedmiConfig", "KedmiPriorConfig", "kedmi_attack", "train_kedmi_prior",
            "inversion_scores", "knn_distance"]

from mijax.attacks.mine import MIEstimate, MINEConfig, estimate_mutual_information  # noqa: E402

__all__ += ["MIEstimate", "MINEConfig", "estimate_mutual_information"]

from mijax.attacks.feature_scaling import feature_statistics, standardize_input  # noqa: E402

__all__ += ["feature_statistics", "standardize_input"]
