"""Why the siftfunnel smoke model stays at chance: a penalty of its objective, or the funnel itself?

    MIJAX_DATA_DIR=../shared/data python experiments/siftfunnel_terms_check.py --epochs 3
    MIJAX_DATA_DIR=../shared/data python experiments/siftfunnel_terms_check.py --epochs 10 \
        --variants "full objective|cross-entropy, no defense"

Trains the funnel CNN `pv4_classifier_4` on the smoke preset's data, optimiser and batch size, with
SiftFunnel's whole objective, without each of its penalties, and with plain cross-entropy. For each
variant it prints the test accuracy on the smoke preset's 256 targets and δ_z (the mean number of
non-zero entries of z, out of 3,072) on 64 of them (RESULTS.md).
"""

from __future__ import annotations

import argparse
import time

import jax
import optax

from mijax_experiments import siftfunnel
from mijax import defenses, losses
from mijax.defenses.siftfunnel import effective_information_volume, no_task_loss
from mijax.models import pv4_classifier_4
from mijax.optim import torch_amsgrad
from mijax.train import evaluate, fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--variants", default="", help="'|'-separated names (default: all)")
    args = parser.parse_args()
    config = siftfunnel.get_config("smoke")
    funnel = pv4_classifier_4(image_size=config.image_size, width=config.width)
    optimizer = optax.chain(optax.add_decayed_weights(config.weight_decay),
                            torch_amsgrad(config.learning_rate, b1=0.5, b2=0.999))
    objective = lambda **kw: defenses.siftfunnel_objective(normalization=funnel.normalization, **kw)
    variants = {
        "full objective": (objective(), no_task_loss),
        "no dCor (beta 0)": (objective(beta=0.0), no_task_loss),
        "no channel corr (gamma 0)": (objective(gamma=0.0), no_task_loss),
        "no L1": (objective(l1=0.0), no_task_loss),
        "KL term only": (objective(beta=0.0, gamma=0.0, l1=0.0), no_task_loss),
        "cross-entropy, no defense": (None, losses.cross_entropy),
    }
    chosen = args.variants.split("|") if args.variants else list(variants)
    unknown = set(chosen) - set(variants)
    if unknown:
        raise SystemExit(f"unknown --variants {sorted(unknown)}; valid: {' | '.join(variants)}")
    (x, y), _, (targets, target_labels) = siftfunnel._load(config)
    key = jax.random.key(0)
    for name in chosen:
        defense, task_loss = variants[name]
        started = time.time()
        state = fit(funnel, x, y, optimizer=optimizer, epochs=args.epochs, batch_size=config.batch_size,
                    key=jax.random.fold_in(key, 1), defense=defense, task_loss=task_loss, progress=False)
        accuracy = float(evaluate(funnel, state.variables, targets, target_labels, key=key))
        delta_z = float(effective_information_volume(funnel.edge_apply(state.variables, targets[:64])[0]))
        print(f"{name:28s} accuracy {accuracy:.3f}  delta_z {delta_z:.0f}  ({time.time() - started:.0f} s)",
              flush=True)


if __name__ == "__main__":
    main()
