"""Where the funnel CNN's eval and train paths part (RESULTS.md, SiftFunnel): trains it with plain
cross-entropy at the smoke budget, then prints per layer the mean output / spread across the 256 targets.

    MIJAX_DATA_DIR=../shared/data python experiments/siftfunnel_eval_mode_check.py
"""
import jax
import numpy as np
import optax
from mijax_experiments import siftfunnel

from mijax.models import pv4_classifier_4
from mijax.optim import torch_amsgrad
from mijax.train import fit

LEARNING_RATE = 0.01  # the table's lr (the smoke preset's before 12-03)


def main() -> None:
    config = siftfunnel.get_config("smoke")
    (x, y), _, (targets, _) = siftfunnel._load(config)
    model = pv4_classifier_4(image_size=64, width=16)
    optimizer = optax.chain(optax.add_decayed_weights(config.weight_decay),
                            torch_amsgrad(LEARNING_RATE, b1=0.5, b2=0.999))
    state = fit(model, x, y, optimizer=optimizer, epochs=3, batch_size=128, key=jax.random.key(1), progress=False)
    names = tuple(model.network.names)
    normalized = model.normalization.normalize(targets)
    for train in (False, True):
        _, _, taps = model.network.apply_tapped(state.variables, normalized, train=train, key=jax.random.key(3),
                                                taps=names)
        print("train" if train else "eval ", " ".join(
            f"{n}:{float(np.asarray(taps[n]).mean()):.3g}/{float(np.asarray(taps[n]).std(0).mean()):.3g}"
            for n in names))


if __name__ == "__main__":
    main()
