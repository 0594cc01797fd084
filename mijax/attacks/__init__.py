"""Attacks: pure functions `attack(knowledge, z_observed, *, config, key) -> x_hat`."""

from mijax.attacks.knowledge import BlackBox, QueryFree, WhiteBox
from mijax.attacks.priors import total_variation
from mijax.attacks.rmle import RMLEConfig, rmle, rmle_objective

__all__ = ["BlackBox", "QueryFree", "WhiteBox", "total_variation", "RMLEConfig", "rmle", "rmle_objective"]

from mijax.attacks.inverse_network import (  # noqa: E402
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

from mijax.attacks.decoder_attack import (  # noqa: E402
    DecoderAttackConfig,
    cem_attack_data,
    decoder_attack,
    stacked_oracle,
    train_decoder_attack,
)
from mijax.attacks.gan import GanConfig, gan_finetune, gradient_penalty  # noqa: E402

__all__ += ["DecoderAttackConfig", "cem_attack_data", "decoder_attack", "stacked_oracle", "train_decoder_attack",
            "GanConfig", "gan_finetune", "gradient_penalty"]
