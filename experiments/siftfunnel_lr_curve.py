"""Test accuracy of the funnel CNN (or Classifier_4) on the 256 smoke targets during plain cross-entropy
training at the smoke budget, after every dispatch (RESULTS.md, SiftFunnel):

    MIJAX_DATA_DIR=../shared/data python experiments/siftfunnel_lr_curve.py funnel 0.01 20
"""
import argparse

import jax
import numpy as np
import optax
from mijax_experiments import siftfunnel

from mijax.models import classifier_4, pv4_classifier_4
from mijax.optim import torch_amsgrad
from mijax.train import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=("funnel", "classifier_4"))
    parser.add_argument("learning_rate", type=float)
    parser.add_argument("epochs", type=int)
    args = parser.parse_args()
    config = siftfunnel.get_config("smoke")
    (x, y), _, (targets, target_labels) = siftfunnel._load(config)
    model = (pv4_classifier_4 if args.model == "funnel" else classifier_4)(image_size=64, width=16)

    def accuracy(variables, images, labels, train=False):
        out, _, _ = model.network.apply_tapped(variables, model.normalization.normalize(images), train=train,
                                               key=jax.random.key(3), taps=())
        predicted = np.asarray(out).argmax(-1)
        return float((predicted == np.asarray(labels)).mean()), int(np.bincount(predicted, minlength=10).max())

    def report(step, state):  # `fit` calls it after every dispatch
        print(args.model, args.learning_rate, "step", step,
              "test eval", accuracy(state.variables, targets, target_labels),
              "test train-mode", accuracy(state.variables, targets, target_labels, True),
              "train-set eval", accuracy(state.variables, x[:512], y[:512]), flush=True)

    optimizer = optax.chain(optax.add_decayed_weights(config.weight_decay),
                            torch_amsgrad(args.learning_rate, b1=0.5, b2=0.999))
    fit(model, x, y, optimizer=optimizer, epochs=args.epochs, batch_size=128, key=jax.random.key(1), progress=False,
        callback=report)


if __name__ == "__main__":
    main()
