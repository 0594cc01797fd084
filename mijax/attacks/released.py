"""The threat model of training-data inversion: a released classifier, white-box.

GMI, KEDMI and the attacks MIDRE evaluates (Zhang et al. CVPR 2020; Chen et al. ICCV 2021; Tran et
al. TMLR 2025) do not observe any transmitted feature: the attacker holds the whole trained classifier
(here a split model's composition h∘g∘f, eval mode, no defense at inference) and reconstructs
representative images of a chosen class. `ReleasedClassifier` is that knowledge as a pytree (its
variables the leaves, the program static and closing over no arrays), so attacks pass it into compiled
programs as an argument, like the split-inference types of `mijax.attacks.knowledge`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax

from mijax.attacks.knowledge import EvalProgram, _check_program
from mijax.defenses.base import Defense
from mijax.nn import Variables
from mijax.pipeline import run
from mijax.split import SplitModel


@dataclasses.dataclass(frozen=True)
class DeployedClassifier:
    """`((variables, defense_state), x) -> logits`: the pipeline with its defense in eval mode (fixed key:
    a defense that samples at inference gives one fixed draw per call)."""

    model: SplitModel
    defense: Defense

    def __call__(self, state, x):
        variables, defense_state = state
        return run(self.model, variables, x, defense=self.defense, defense_state=defense_state,
                   key=jax.random.key(0)).logits


@functools.partial(jax.tree_util.register_dataclass, data_fields=["variables"],
                   meta_fields=["program", "input_shape", "num_classes"])
@dataclasses.dataclass(frozen=True, eq=False)
class ReleasedClassifier:
    """A trained classifier as the attacker of training-data inversion holds it (white-box).

    Attributes:
        program: `program(variables, x) -> logits`, eval mode, differentiable in `x ∈ [0,1]`.
        variables: the classifier's variables.
        input_shape: `(height, width, channels)`.
        num_classes: the classifier's outputs (the private classes).
    """

    program: Callable
    variables: Any
    input_shape: tuple[int, int, int] = dataclasses.field(kw_only=True)
    num_classes: int = dataclasses.field(kw_only=True)

    def __post_init__(self):
        _check_program("program", self.program)
        object.__setattr__(self, "input_shape", tuple(self.input_shape))

    def logits(self, x: jax.Array) -> jax.Array:
        """`[batch, num_classes]` logits for images `x` `[batch, *input_shape]` in [0, 1]."""
        return self.program(self.variables, x)

    @classmethod
    def from_model(cls, model: SplitModel, variables: Variables, *, defense: Defense | None = None,
                   defense_state: Any = None) -> ReleasedClassifier:
        """The whole split model (edge, cloud and tail) as released: `model.forward` in eval mode, or
        with `defense` the deployed pipeline (its eval-mode transforms, e.g. MID's bottleneck)."""
        if defense is None:
            return cls(EvalProgram(model, "forward"), variables, input_shape=model.input_shape,
                       num_classes=model.num_classes)
        return cls(DeployedClassifier(model, defense), (variables, defense_state), input_shape=model.input_shape,
                   num_classes=model.num_classes)
