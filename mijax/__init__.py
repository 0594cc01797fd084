"""mijax: model inversion attacks and defenses for collaborative (split) inference, in JAX/Flax.

    >>> from mijax import data, defenses, metrics, models, train
    >>> from mijax.attacks import WhiteBox, rmle

Submodules: `models` (split target networks), `data` (TF-free datasets), `defenses`, `attacks`,
`pipeline` (the deployed forward pass), `train` (fit loop with checkpoints), `losses` (task losses),
`metrics`, `report`. `docs/architecture.md` of the repository explains how they fit together.
"""

from mijax import attacks, data, defenses, losses, metrics, models, pipeline, report, train
from mijax.split import SplitModel

__version__ = "0.2.0"

__all__ = ["SplitModel", "attacks", "data", "defenses", "losses", "metrics", "models", "pipeline", "report",
           "train"]
