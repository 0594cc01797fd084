"""Why the he2019 smoke run's CIFAR-10 relu22 white-box SSIM is low: iterations or the TV weight?

    MIJAX_DATA_DIR=../shared/data python experiments/he2019_tv_check.py --workdir /tmp/he_smoke

Reloads the CIFAR10CNN target that `mijax run he2019 --preset smoke --workdir DIR` trained (it is
retrained, about a minute, if DIR has no checkpoint) and runs the white-box rMLE attack at relu22 on
the same ten evaluated images with more iterations and with smaller TV weights (the smoke preset:
300 iterations, step 5e-2, the paper's λ_TV = 10). Prints the he2019-mode SSIM and PSNR (RESULTS.md).
"""

from __future__ import annotations

import argparse
import pathlib

import jax

from mijax_experiments import he2019
from mijax import data
from mijax.attacks import RMLEConfig, WhiteBox, rmle

SETTINGS = ((300, 10.0), (1000, 10.0), (3000, 10.0), (1000, 1.0), (1000, 0.0))  # (iterations, λ_TV)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="the work directory of a he2019 smoke run")
    args = parser.parse_args()
    config, name = he2019.get_config("smoke"), "cifar10"
    dataset_index = config.datasets.index(name)
    train_key = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), dataset_index), 3)[0]
    train, test = data.load(name, f"train[:{config.train_size}]"), data.load(name, "test")
    model = he2019.TARGETS[name].model(cut=he2019.TARGETS[name].cuts[0])
    state = he2019._train_target(name, model, train, config, train_key,
                                 pathlib.Path(args.workdir) / name / "target", progress=False)
    targets = test.images[data.eval_subset_one_per_class(test)]
    cut_model = model.with_cut("relu22")
    z, _ = cut_model.edge_apply(state.variables, targets)
    for steps, tv_weight in SETTINGS:
        attack_config = RMLEConfig(num_steps=steps, learning_rate=config.whitebox_learning_rate,
                                   tv_weight=tv_weight, legacy_eps=config.legacy_eps)
        attack = jax.jit(lambda v, z: rmle(WhiteBox.from_model(cut_model, v), z, config=attack_config))
        scores = he2019._scores(attack(state.variables, z), targets)
        print(f"relu22, {steps:4d} iterations, TV weight {tv_weight:4.1f}: SSIM {scores['ssim']:.3f}, "
              f"PSNR {scores['psnr']:.2f}", flush=True)


if __name__ == "__main__":
    main()
