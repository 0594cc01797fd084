"""SiftFunnel (Liu et al., arXiv 2501.00824): the funnel edge against the defenses it is compared with,
on CIFAR-10 at 64×64 (the reference's CIFAR setting).

Command: `mijax run siftfunnel --preset smoke|paper|tiny` (reads CIFAR-10 from `$MIJAX_DATA_DIR`).
Cost: `smoke` about 20 minutes on 2 idle CPU cores with its stated reductions (width 16 instead of
ndf 64, 2,000 training images, 15 epochs at lr 1e-3 with the BatchNorm statistics recomputed after
training, 15 decoder epochs on standardised features, a 100-step white-box attack, an MLP MINE critic on 16×16 images); `paper` the reference's budgets (ndf 64, the full training set, 300 epochs,
decoders 100 epochs, 500 white-box iterations, the reference's MINE critic) for a GPU; `tiny` the CI
check that every part runs.

Models: the unprotected `Classifier_4` cut at block 2 (128·w/64 × 16×16) and the funnel
`pv4_classifier_4` cut at its funnel (12×16×16), trained from scratch with the reference's optimiser
(AMSGrad Adam, betas (0.5, 0.999), coupled weight decay 1e-3). At the smoke preset's 45 steps the
reference's lr 0.01 leaves the funnel CNN at chance even in train mode (it starts to learn after about
90 steps), and eval mode lags train mode until the BatchNorm running statistics catch up, so `smoke`
trains at lr 1e-3 and recomputes every BatchNorm's statistics with the final weights
(`precise_bn`, `mijax.batch_stats`); RESULTS.md has the measurements. Trained defenses: SiftFunnel
(its objective, `no_task_loss`), MID (VIB on z), BiDO (normalised HSIC on z), NoPeek (dCor on z);
inference-time ones on the trained unprotected model: Gaussian noise (σ 0.8), dropout (r 0.8),
local-DP Laplace noise (ε, clipped to Δ = 1); and SiftFunnel + noise (σ 0.8 on the funnel output).

Attacks (the attacker's data is the first `attacker_images` of the CIFAR-10 test split, its last 10 %
held out; the targets are the next `target_images`): the decoder attack (`decoder_architecture`: "generic" `decoder_for`
(`smoke`) or "reference", the reference's per-block inverse networks (`paper`, `tiny`), trained on
queries of the deployed edge; `decoder_selection`: "held_out" keeps the epoch with the lowest MSE on the held-out attacker
images (`paper`, `tiny`), "oracle" the reference's selection on the target's training images, which
favours the attacker, "last" the final epoch (`smoke`, to save compilations); the held-out attacker
MSE is reported; `decoder_standardize`: the decoder sees z̃ standardised per channel with the statistics of
the attacker's own queries, off in `paper` as in the reference) and a white-box attack (`white_box`: He et al.'s
rMLE, Adam from grey, in `smoke` and `tiny`; the reference's `white_box_tv_attack`, from N(0,1), SGD momentum 0.9,
λ_TV 1e3 on √TV, in `paper`). Reported per row: test accuracy, attack MSE / PSNR /
SSIM (canonical) and the `siftfunnel` compatibility numbers (3-D SSIM over batches of 32, PSNR from the
batch MSE, channel-summed MSE), cosine similarity, the MINE estimate of I(x; z̃), δ_z (mean non-zero
entries of z̃), edge parameters, edge FLOPs (XLA's cost analysis) and transmitted floats per image.

Expected (smoke): the funnel transmits 2.7× fewer values than Classifier_4 at block 2 (10.7× at ndf 64, where
its edge also costs 4.7× fewer FLOPs); SiftFunnel raises the decoder attack's MSE about 10× over the unprotected CNN at an
accuracy cost of a few points (2.3 in RESULTS.md's run).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from mijax_experiments import common
from mijax import data, defenses, losses, metrics, report
from mijax.attacks import (BlackBox, DecoderAttackConfig, RMLEConfig, WhiteBox, decoder_attack, feature_statistics,
                           rmle, standardize_input, train_decoder_attack)
from mijax.attacks.mine import MINEConfig, estimate_mutual_information
from mijax.attacks.white_box_tv import white_box_tv_attack
from mijax.batch_stats import recompute_batch_stats
from mijax.defenses.siftfunnel import effective_information_volume, no_task_loss
from mijax.models import classifier_4, decoder_for, pv4_classifier_4, siftfunnel_decoder
from mijax.models.siftfunnel_decoders import SIFTFUNNEL_TAPS
from mijax.nn import num_params
from mijax.optim import freeze, torch_amsgrad
from mijax.train import evaluate, fit

import optax

SELECTIONS = ("held_out", "oracle", "last")
DECODERS = ("generic", "reference")
WHITE_BOXES = ("rmle", "reference")
ROWS = ("unprotected", "siftfunnel", "mid", "bido", "nopeek", "noise", "dropout", "local_dp", "siftfunnel+noise")
# The abstract's claims (v7), for RESULTS.md: accuracy loss < 3 %, ≈ +30 % reconstruction error against
# the strongest defense, ≥ 50 % lower MI and effective information, ≈ 20× lower edge cost.


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Settings (defaults: `smoke`)."""

    dataset: str = "cifar10"
    image_size: int = 64
    width: int = 16
    train_images: int = 2000
    attacker_images: int = 1000
    target_images: int = 256
    epochs: int = 15
    batch_size: int = 128
    learning_rate: float = 1e-3  # the reference's 0.01 (`paper`) needs its 300 epochs
    weight_decay: float = 1e-3
    # recompute the BatchNorm statistics of every trained model with its final weights (short runs)
    precise_bn: bool = True
    dormant_epochs: int = 0
    decoder_epochs: int = 15
    decoder_width: int = 16
    decoder_selection: str = "last"
    # "generic": `decoder_for` at `decoder_width`; "reference": the reference's per-block inverse
    # networks (`Inversion_4` for Classifier_4, `pv4_Inversion_4` for the funnel CNN;
    # `mijax.models.siftfunnel_decoder`, widths tied to the target's `width`)
    decoder_architecture: str = "generic"
    # the decoder sees z̃ standardised per channel with statistics of the attacker's own queries
    # (`mijax.attacks.feature_scaling`): the funnel's outputs are 1e-4-0.03 in scale
    decoder_standardize: bool = True
    # "reference": the reference's attack (`white_box_tv_attack`: SGD lr 0.01 on the mean feature MSE,
    # λ_TV 1e3 on √TV), which does not leave its N(0, 1) start in 100 steps; "rmle": He et al.'s rMLE
    # (`mijax.attacks.rmle`, Adam lr 0.05 from grey, λ_TV 0.05), the white-box attack that converges
    white_box: str = "rmle"
    white_box_steps: int = 100
    white_box_images: int = 16
    mine_steps: int = 200
    mine_critic: str = "mlp"
    mine_image_size: int = 16
    noise_sigma: float = 0.8
    dropout_rate: float = 0.8
    dp_epsilon: float = 1.0
    mid_beta: float = 1e-4
    bido_lambda_x: float = 0.05
    bido_lambda_y: float = 0.5
    nopeek_alpha: float = 0.5
    rows: tuple[str, ...] = ROWS
    seed: int = 0
    mesh: str = ""

    def validate(self) -> None:
        unknown = set(self.rows) - set(ROWS)
        if unknown:
            raise ValueError(f"unknown rows {sorted(unknown)}; valid: {', '.join(ROWS)}")
        if "unprotected" not in self.rows:
            raise ValueError("expected rows to include 'unprotected' (the inference-time defenses use it)")
        if self.decoder_architecture not in DECODERS:
            raise ValueError(f"expected decoder_architecture in {DECODERS}, got {self.decoder_architecture!r}")
        if self.decoder_selection not in SELECTIONS:
            raise ValueError(f"expected decoder_selection in {SELECTIONS}, got {self.decoder_selection!r}")
        if self.white_box not in WHITE_BOXES:
            raise ValueError(f"expected white_box in {WHITE_BOXES}, got {self.white_box!r}")
        if self.attacker_images < 20 or self.target_images < 2:
            raise ValueError(f"expected attacker_images >= 20 and target_images >= 2, got "
                             f"{self.attacker_images}, {self.target_images}")


PRESETS = {
    "tiny": Config(image_size=32, width=4, train_images=128, attacker_images=64, target_images=32, epochs=1,
                   batch_size=32, decoder_epochs=2, decoder_selection="held_out", decoder_architecture="reference", decoder_width=8, white_box_steps=5, white_box_images=4,
                   mine_steps=10, mine_image_size=8),
    "smoke": Config(),
    "paper": Config(learning_rate=0.01, precise_bn=False, decoder_standardize=False, white_box="reference", width=64, train_images=50000, attacker_images=5000, target_images=5000, epochs=300,
                    decoder_epochs=100, decoder_width=64, decoder_selection="held_out", decoder_architecture="reference", white_box_steps=500, white_box_images=64,
                    mine_steps=20000, mine_critic="siftfunnel", mine_image_size=64),
}


def get_config(preset: str = "smoke") -> Config:
    return common.preset(PRESETS, preset)


def _load(config: Config):
    size = config.image_size
    resize = lambda x: np.clip(np.asarray(data.resize(x, (size, size))), 0, 1).astype(np.float32)
    train, test = data.load(config.dataset, "train"), data.load(config.dataset, "test")
    n_aux = config.attacker_images
    x = resize(train.images[:config.train_images])
    aux = resize(test.images[:n_aux])
    targets = resize(test.images[n_aux:n_aux + config.target_images])
    return (x, train.labels[:config.train_images]), aux, (targets, test.labels[n_aux:n_aux + config.target_images])


def _edge_cost(model, variables) -> tuple[int, float]:
    x = jax.ShapeDtypeStruct((1, *model.input_shape), jnp.float32)
    compiled = jax.jit(lambda v, x: model.edge_apply(v, x)[0]).lower(model.edge_variables(variables), x).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return num_params(model.edge_variables(variables)), float(cost.get("flops", float("nan")))


def _decoder(config: Config, decoder, oracle, aux_train, aux_held, train, *, key, workdir, progress):
    """The decoder attack and its held-out attacker MSE. "held_out": trained epoch by epoch (each call
    resumes from the checkpoint; the cosine period fixed at `decoder_epochs`), keeping the epoch with the
    lowest MSE on the attacker's held-out images; "oracle": the lowest MSE on the target's training
    images (the reference's selection, which favours the attacker); "last": the final epoch."""
    batch = min(config.batch_size, len(aux_train))
    epochs = [config.decoder_epochs] if config.decoder_selection == "last" else range(1, config.decoder_epochs + 1)
    select_x = train[0][:len(aux_held)] if config.decoder_selection == "oracle" else aux_held
    best = None
    for e in epochs:
        dec = train_decoder_attack(decoder, oracle, aux_train, key=key, workdir=workdir, progress=progress,
                                   config=DecoderAttackConfig(epochs=e, batch_size=batch, t_max=config.decoder_epochs))
        held = float(metrics.mse(decoder_attack(dec, oracle.query(aux_held, key=jax.random.fold_in(key, 3))),
                                 aux_held).mean())
        score = held if select_x is aux_held else float(metrics.mse(
            decoder_attack(dec, oracle.query(select_x, key=jax.random.fold_in(key, 4))), select_x).mean())
        if best is None or score < best[0]:
            best = (score, dec, held)
    return best[1], best[2]


def _white_box(config: Config, knowledge: WhiteBox, z, *, key):
    if config.white_box == "reference":
        return white_box_tv_attack(knowledge, z, key=key, steps=config.white_box_steps)
    rmle_config = RMLEConfig(num_steps=config.white_box_steps, learning_rate=0.05, tv_weight=0.05, optimizer="adam",
                             space="pixel", eps=1e-8)
    return jax.jit(lambda knowledge, z: rmle(knowledge, z, config=rmle_config))(knowledge, z)  # from grey: no key


def run(config: Config, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
    """Trains the models, attacks every row and reports; returns the results."""
    config.validate()
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    common.guard_workdir(workdir, config)
    report.write_config(workdir, config, seed=config.seed)
    started = time.perf_counter()
    key = jax.random.key(config.seed)
    (x, y), aux, (targets, target_labels) = _load(config)
    kw = dict(image_size=config.image_size, width=config.width)
    plain, funnel = classifier_4(**kw), pv4_classifier_4(**kw)
    optimizer = optax.chain(optax.add_decayed_weights(config.weight_decay),
                            torch_amsgrad(config.learning_rate, b1=0.5, b2=0.999))
    held_out = max(len(aux) // 10, 2)
    aux_train, aux_held = aux[:-held_out], aux[-held_out:]

    trained = {  # name: (model, training defense, task loss)
        "unprotected": (plain, None, losses.cross_entropy),
        "siftfunnel": (funnel, defenses.siftfunnel_objective(normalization=funnel.normalization), no_task_loss),
        "mid": (plain, defenses.vib_bottleneck(beta=config.mid_beta), losses.cross_entropy),
        "bido": (plain, defenses.bilateral_dependency(lambda_x=config.bido_lambda_x, lambda_y=config.bido_lambda_y,
                                                      normalization=plain.normalization), losses.cross_entropy),
        "nopeek": (plain, defenses.nopeek(alpha=config.nopeek_alpha, normalization=plain.normalization),
                   losses.cross_entropy),
    }
    noise = defenses.gaussian_noise(sigma=config.noise_sigma)
    deployed = {  # name: (trained model name, inference-time defense or None for the training defense)
        "noise": ("unprotected", noise),
        "dropout": ("unprotected", defenses.dropout(rate=config.dropout_rate)),
        "local_dp": ("unprotected", defenses.local_dp_noise(epsilon=config.dp_epsilon)),
        "siftfunnel+noise": ("siftfunnel", noise),
    }
    fitted = {}
    for name in [r for r in trained if r in config.rows or any(deployed.get(d, ("",))[0] == r for d in config.rows)]:
        model, defense, task = trained[name]
        fitted[name] = fit(model, x, y, optimizer=optimizer, epochs=config.epochs, batch_size=config.batch_size,
                           key=jax.random.fold_in(key, ROWS.index(name)), defense=defense, task_loss=task,
                           workdir=workdir / "checkpoints" / name, progress=progress)
        if name == "siftfunnel" and config.dormant_epochs:
            # the reference's dormant stage: everything before the "up" block frozen, the task loss only
            # (label-smoothed KL, as the objective's task term), lr 1e-5
            frozen = tuple(model.network.names[:model.network.index("up")])
            stage = optax.chain(optax.add_decayed_weights(config.weight_decay),
                                torch_amsgrad(1e-5, b1=0.5, b2=0.999))
            task_only = defenses.siftfunnel_objective(beta=0.0, gamma=0.0, l1=0.0)
            dormant = fit(model, x, y, optimizer=freeze(stage, frozen=frozen), epochs=config.dormant_epochs,
                          batch_size=config.batch_size, key=jax.random.fold_in(key, 99), defense=task_only,
                          task_loss=no_task_loss, variables=fitted[name].variables,
                          workdir=workdir / "checkpoints" / "siftfunnel_dormant", progress=progress)
            fitted[name] = dormant._replace(defense_state=fitted[name].defense_state)
        if config.precise_bn:
            variables = recompute_batch_stats(model, fitted[name].variables, x, key=jax.random.fold_in(key, 200),
                                              defense=defense, defense_state=fitted[name].defense_state,
                                              batch_size=config.batch_size)
            fitted[name] = fitted[name]._replace(variables=variables)

    rows, grids = [], {}
    for i, name in enumerate(config.rows):
        source, inference = (name, None) if name in trained else deployed[name]
        model, training_defense, _ = trained[source]
        state = fitted[source]
        if inference is None:
            defense = training_defense or defenses.identity()
            defense_state = state.defense_state
        elif training_defense is None:
            defense, defense_state = inference, inference.init()
        else:  # the training defense's transform (none for SiftFunnel), then the inference noise
            defense = defenses.chain(training_defense, inference)
            defense_state = (state.defense_state, inference.init())
        row_key = jax.random.fold_in(key, 100 + i)
        accuracy = float(evaluate(model, state.variables, targets, target_labels, defense=defense,
                                  defense_state=defense_state, key=row_key))
        oracle = BlackBox.from_model(model, state.variables, defense=defense, defense_state=defense_state)
        if config.decoder_architecture == "reference":
            model_name = "pv4_classifier_4" if model is funnel else "classifier_4"
            decoder = siftfunnel_decoder(model_name, SIFTFUNNEL_TAPS[model_name].index(model.cut) + 1,
                                         width=config.width, channels=model.input_shape[-1],
                                         image_size=config.image_size)
        else:
            decoder = decoder_for(model.feature_shape(), model.input_shape, width=config.decoder_width)
        if config.decoder_standardize:
            mean, std = feature_statistics(oracle, aux_train, key=jax.random.fold_in(row_key, 8))
            decoder = standardize_input(decoder, mean=mean, std=std)
        dec, held_mse = _decoder(config, decoder, oracle, aux_train, aux_held, (x, y),
                                 key=jax.random.fold_in(row_key, 1), workdir=workdir / "checkpoints" / f"decoder_{name}",
                                 progress=progress)
        z_targets = oracle.query(targets, key=jax.random.fold_in(row_key, 2))
        x_hat = np.asarray(decoder_attack(dec, z_targets))
        canonical = {k: float(v.mean()) for k, v in metrics.reconstruction_metrics(x_hat, targets).items()}
        compat = {k: float(v) for k, v in metrics.siftfunnel_metrics(x_hat, targets).items()}
        wb_targets = targets[:config.white_box_images]
        wb = np.asarray(_white_box(config, WhiteBox.from_model(model, state.variables),
                                   z_targets[:config.white_box_images], key=jax.random.fold_in(row_key, 4)))
        # MINE of I(x; z̃) trained on the target's training data, evaluated on the attacker's data
        small = lambda im: np.asarray(data.resize(im, (config.mine_image_size,) * 2))
        z_train = np.asarray(oracle.query(x, key=jax.random.fold_in(row_key, 5)))
        z_aux = np.asarray(oracle.query(aux, key=jax.random.fold_in(row_key, 6)))
        mine = estimate_mutual_information(
            small(x) if config.mine_critic == "mlp" else x, z_train, key=jax.random.fold_in(row_key, 7),
            eval_x=small(aux) if config.mine_critic == "mlp" else aux, eval_z=z_aux, critic=config.mine_critic,
            config=MINEConfig(steps=config.mine_steps, batch_size=min(128, len(aux)),
                              learning_rate=1e-3 if config.mine_critic == "mlp" else 0.01,
                              eval_every=max(config.mine_steps // 4, 1), seeds=2))
        params, flops = _edge_cost(model, state.variables)
        rows.append({
            "defense": name, "model": "pv4_classifier_4" if model is funnel else "classifier_4", "accuracy": accuracy,
            "decoder_mse": canonical["mse"], "decoder_psnr": canonical["psnr"], "decoder_ssim": canonical["ssim"],
            "decoder_mse_sf": compat["mse"], "decoder_psnr_sf": compat["psnr"], "decoder_ssim_sf": compat["ssim"],
            "decoder_cosine": compat["cosine"], "decoder_heldout_attacker_mse": held_mse,
            "whitebox_mse": float(metrics.mse(wb, wb_targets).mean()),
            "whitebox_ssim": float(metrics.ssim(wb, wb_targets).mean()) if config.image_size >= 11 else float("nan"),
            "mine": mine.value, "mine_spread": mine.spread,
            "delta_z": float(effective_information_volume(z_targets)),
            "edge_params": params, "edge_flops": flops, "transmitted_floats": int(math.prod(model.feature_shape())),
        })
        grids[name] = x_hat
        report.write_results(workdir, rows, extra={"partial": True})  # a long run's finished rows survive
        grids[f"{name} (white-box)"] = np.concatenate([wb, np.zeros_like(x_hat[len(wb):])])[:len(x_hat)]
    report.reconstruction_grid(workdir / "reconstructions.png", targets, grids, title="SiftFunnel: decoder and white-box")
    report.privacy_utility_plot(workdir / "privacy_utility.png", [{**r, "index": i} for i, r in enumerate(rows)],
                                x="index", privacy="decoder_ssim", group="defense",
                                title="decoder SSIM and accuracy per defense", xlabel="row")
    columns = ["defense", "accuracy", "decoder_mse", "decoder_psnr", "decoder_ssim", "decoder_mse_sf",
               "decoder_psnr_sf", "decoder_ssim_sf", "decoder_cosine", "whitebox_mse", "mine", "delta_z",
               "edge_params", "edge_flops", "transmitted_floats"]
    (workdir / "tables.md").write_text(report.format_table(rows, columns) + "\n")
    results = {"rows": rows, "seconds": time.perf_counter() - started}
    report.write_results(workdir, rows, extra={"seconds": results["seconds"]})
    return results
