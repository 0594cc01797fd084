"""mijax: model inversion attacks and defenses for collaborative (split) inference, in JAX/Flax.

    >>> from mijax import data, defenses, metrics, models, train
    >>> from mijax.attacks import WhiteBox, rmle

Submodules: `models` (split target networks), `data` (TF-free datasets), `defenses`, `attacks`,
`train` (fit loop with checkpoints), `metrics`, `report`.
"""

from mijax import attacks, data, defenses, metrics, models, report, train
from mijax.split import SplitModel

__version__ = "0.1.0"

__all__ = ["SplitModel", "attacks", "data", "defenses", "metrics", "models", "report", "train"]
