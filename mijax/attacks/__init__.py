"""Attacks: pure functions `attack(knowledge, z_observed, *, config, key) -> x_hat`."""

from mijax.attacks.knowledge import BlackBox, QueryFree, WhiteBox
from mijax.attacks.priors import total_variation
from mijax.attacks.mle_inversion import RMLEConfig, rmle, rmle_objective

__all__ = ["BlackBox", "QueryFree", "WhiteBox", "total_variation", "RMLEConfig", "rmle", "rmle_objective"]

from mijax.attacks.learned_inversion import (  # noqa: E402
    InverseNetworkConfig,
    TrainedDecoder,
    attacker_images,
    inverse_network,
    noise_images,
    query_dataset,
    train_inverse_network,
)
from mijax.attacks.shadow import ShadowConfig, TrainedShadow, he2019_shadow, shadow_attack, train_shadow  # noqa: E402

__all__ += ["InverseNetworkConfig", "TrainedDecoder", "attacker_images", "inverse_network", "noise_images",
            "query_dataset", "train_inverse_network", "ShadowConfig", "TrainedShadow", "he2019_shadow",
            "shadow_attack", "train_shadow"]

from mijax.attacks.noise_aware_decoder import (  # noqa: E402
    DecoderAttackConfig,
    cem_attack_data,
    decoder_attack,
    train_decoder_attack,
)
from mijax.attacks.gan import GanConfig, gan_finetune, gradient_penalty  # noqa: E402

__all__ += ["DecoderAttackConfig", "cem_attack_data", "decoder_attack", "train_decoder_attack",
            "GanConfig", "gan_finetune", "gradient_penalty"]
