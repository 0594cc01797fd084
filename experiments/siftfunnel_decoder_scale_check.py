"""Is the decoder attack's mean-image result on the funnel a feature-scale artifact? (RESULTS.md, SiftFunnel)

Loads (or trains) a smoke run's unprotected or SiftFunnel model, then trains the generic and the reference
decoder on raw and on standardised features (`mijax.attacks.feature_scaling`) for each number of epochs and
prints the target MSE / SSIM:

    MIJAX_DATA_DIR=../shared/data python experiments/siftfunnel_decoder_scale_check.py \
        runs/siftfunnel_smoke siftfunnel 3,15,50
"""
import argparse
import pathlib
import time

import jax
import numpy as np
import optax
from mijax_experiments import siftfunnel

from mijax import defenses, losses, metrics
from mijax.attacks import (
    BlackBox,
    DecoderAttackConfig,
    decoder_attack,
    train_decoder_attack,
)
from mijax.attacks.feature_scaling import feature_statistics, standardize_input
from mijax.batch_stats import recompute_batch_stats
from mijax.defenses.siftfunnel import no_task_loss
from mijax.models import classifier_4, decoder_for, pv4_classifier_4, siftfunnel_decoder
from mijax.models.siftfunnel_decoders import SIFTFUNNEL_TAPS
from mijax.optim import torch_amsgrad
from mijax.train import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=pathlib.Path, help="a smoke run's workdir (its checkpoints are reused)")
    parser.add_argument("row", choices=("unprotected", "siftfunnel"))
    parser.add_argument("epochs", help="decoder epochs, comma-separated")
    args = parser.parse_args()
    config = siftfunnel.get_config("smoke")
    (x, y), aux, (targets, _) = siftfunnel._load(config)
    aux_train = aux[:-max(len(aux) // 10, 2)]  # the experiment's split
    key = jax.random.key(config.seed)
    if args.row == "siftfunnel":
        model = pv4_classifier_4(image_size=64, width=config.width)
        defense, task, decoder_name = defenses.siftfunnel_objective(normalization=model.normalization), no_task_loss, "pv4_classifier_4"
    else:
        model, defense, task, decoder_name = classifier_4(image_size=64, width=config.width), None, losses.cross_entropy, "classifier_4"
    optimizer = optax.chain(optax.add_decayed_weights(config.weight_decay),
                            torch_amsgrad(config.learning_rate, b1=0.5, b2=0.999))
    state = fit(model, x, y, optimizer=optimizer, epochs=config.epochs, batch_size=config.batch_size,
                key=jax.random.fold_in(key, siftfunnel.ROWS.index(args.row)), defense=defense, task_loss=task,
                workdir=args.workdir / "checkpoints" / args.row, progress=False)
    variables = recompute_batch_stats(model, state.variables, x, key=jax.random.fold_in(key, 200), defense=defense,
                                      defense_state=state.defense_state, batch_size=config.batch_size)
    oracle = BlackBox.from_model(model, variables, defense=defense or defenses.identity(),
                                 defense_state=state.defense_state)
    mean, std = feature_statistics(oracle, aux_train, key=jax.random.key(7))
    print(f"{args.row}: z per-channel std {np.round(std, 4)}; mean-image MSE "
          f"{float(metrics.mse(np.broadcast_to(aux_train.mean(0), targets.shape), targets).mean()):.4f}", flush=True)
    generic = decoder_for(model.feature_shape(), model.input_shape, width=config.decoder_width)
    reference = siftfunnel_decoder(decoder_name, SIFTFUNNEL_TAPS[decoder_name].index(model.cut) + 1,
                                   width=config.width, channels=3, image_size=64)
    z_targets = oracle.query(targets, key=jax.random.key(8))
    for label, decoder in (("generic", generic), ("reference", reference)):
        for scaling, d in (("raw", decoder), ("standardised", standardize_input(decoder, mean=mean, std=std))):
            for epochs in map(int, args.epochs.split(",")):
                started = time.perf_counter()
                trained = train_decoder_attack(d, oracle, aux_train, key=jax.random.key(9), progress=False,
                                               config=DecoderAttackConfig(epochs=epochs, batch_size=64))
                x_hat = decoder_attack(trained, z_targets)
                print(f"{args.row} {label} {scaling} {epochs} epochs: MSE {float(metrics.mse(x_hat, targets).mean()):.4f} "
                      f"SSIM {float(metrics.ssim(x_hat, targets).mean()):.3f} ({time.perf_counter() - started:.0f} s)",
                      flush=True)


if __name__ == "__main__":
    main()
