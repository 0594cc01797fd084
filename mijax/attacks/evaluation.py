"""Scoring training-data inversion with an independent evaluation classifier (`metrics.md` §3).

GMI, KEDMI and MIDRE score reconstructions of a target class with an evaluation model of another
architecture, trained on the private data without defenses:

- attack accuracy (top-1 / top-k): the fraction of reconstructions the evaluator assigns to their
  target class;
- KNN distance (reference metric code `knn.py`): the mean over reconstructions of the minimum
  **squared** L2 distance, in the evaluator's penultimate features, to any private training image of
  the reconstruction's target class.

No reconstruction is discarded: one reference recovery loop drops runs whose FID exceeds a threshold,
which conditions the reported accuracy on the attack having worked (a selection on the outcome that
inflates it, and one a defense can exploit or suffer from arbitrarily); mijax reports every run.

Example:
    >>> scores = inversion_scores(evaluator, evaluator_variables, x_hat, targets,
    ...                           private_images=x_private, private_labels=y_private)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mijax import checks, metrics
from mijax.nn import Variables
from mijax.split import SplitModel


def knn_distance(features: jax.typing.ArrayLike, targets: jax.typing.ArrayLike,
                 private_features: jax.typing.ArrayLike, private_labels: jax.typing.ArrayLike) -> jax.Array:
    """Per reconstruction, `min_j ‖φ(x̂_i) − φ(x_j)‖²` over private images j of class `targets[i]`.

    Args:
        features: `[n, d]` evaluator features of the reconstructions.
        targets: `[n]` their target classes.
        private_features: `[m, d]` evaluator features of the private training images.
        private_labels: `[m]` their classes.

    Returns:
        `[n]` squared distances (their mean is the reference's KNN distance); +inf for a target class
        without private images.

    Raises:
        ValueError: on mismatched shapes.
    """
    features, private_features = jnp.asarray(features, jnp.float32), jnp.asarray(private_features, jnp.float32)
    targets, private_labels = jnp.asarray(targets), jnp.asarray(private_labels)
    if features.ndim != 2 or private_features.ndim != 2 or features.shape[1] != private_features.shape[1]:
        raise ValueError(f"expected features [n, d] and private_features [m, d], got {features.shape} and "
                         f"{private_features.shape}")
    if targets.shape != features.shape[:1] or private_labels.shape != private_features.shape[:1]:
        raise ValueError(f"expected targets [{features.shape[0]}] and private_labels [{private_features.shape[0]}], "
                         f"got {targets.shape} and {private_labels.shape}")
    return _knn(features, targets, private_features, private_labels)


@jax.jit
def _knn(features, targets, private_features, private_labels):
    # ‖a − b‖² = ‖a‖² + ‖b‖² − 2⟨a, b⟩, clipped at 0 against rounding
    squared = (jnp.sum(features ** 2, 1)[:, None] + jnp.sum(private_features ** 2, 1)[None, :]
               - 2 * features @ private_features.T)
    same = targets[:, None] == private_labels[None, :]
    return jnp.min(jnp.where(same, jnp.maximum(squared, 0.0), jnp.inf), axis=1)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _logits_and_features(model: SplitModel, feature_layer: str, variables, x):
    features, _ = model.with_cut(feature_layer).edge_apply(variables, x)
    logits, _ = model.with_cut(feature_layer).cloud_apply(variables, features)
    return logits, features.reshape(features.shape[0], -1)


def evaluator_outputs(evaluator: SplitModel, variables: Variables, images, *, feature_layer: str,
                      batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """`(logits [n, classes], features [n, d])` of the evaluator (eval mode), the features being the
    output of `feature_layer` (its penultimate layer), in batches."""
    images = np.asarray(images, np.float32)
    evaluator.check_images(images)
    checks.nonempty("images", images.shape)
    out = [_logits_and_features(evaluator, feature_layer, variables, images[s:s + batch_size])
           for s in range(0, len(images), batch_size)]
    return (np.concatenate([np.asarray(o[0]) for o in out]), np.concatenate([np.asarray(o[1]) for o in out]))


def inversion_scores(evaluator: SplitModel, variables: Variables, images, targets, *, private_images,
                     private_labels, feature_layer: str, top_k: int = 5,
                     private_features: np.ndarray | None = None) -> dict[str, float]:
    """Attack accuracy (top-1, top-k) and KNN distance of reconstructions, by the evaluation model.

    Args:
        evaluator: the evaluation classifier (another architecture than the target, trained without
            defenses on the private data); its classes index as the targets'.
        variables: its trained variables.
        images: `[n, height, width, channels]` reconstructions in [0, 1].
        targets: `[n]` the class each reconstruction was made for.
        private_images, private_labels: the private training images and classes (for KNN).
        feature_layer: the evaluator's penultimate layer (its output is the feature space).
        top_k: k of the top-k accuracy (5 in the references).
        private_features: the evaluator's features of `private_images`, if already computed.

    Returns:
        `{"top1", f"top{top_k}", "knn_distance"}` (accuracies in [0, 1]; the mean KNN distance).
    """
    targets = np.asarray(targets)
    logits, features = evaluator_outputs(evaluator, variables, images, feature_layer=feature_layer)
    if private_features is None:
        _, private_features = evaluator_outputs(evaluator, variables, private_images, feature_layer=feature_layer)
    knn = knn_distance(features, targets, private_features, np.asarray(private_labels))
    return {"top1": float(jnp.mean(metrics.accuracy(logits, targets))),
            f"top{top_k}": float(jnp.mean(metrics.top_k_accuracy(logits, targets, k=top_k))),
            "knn_distance": float(jnp.mean(knn))}
