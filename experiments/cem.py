"""CEM (Xia et al., CVPR 2025): the σ×λ grid of noise + CEM on vgg11_bn_sgm, attacked three ways.

Command: `mijax run cem --preset smoke|cpu|paper|faces|tiny [--workdir DIR] [--set key=value ...]`.
Spec: `../shared/methods/cem.md`.

1. Trains vgg11_bn_sgm (cut 4: z ∈ (0,1)^{8×8×8} at 32 px) with Gaussian feature noise σ and the CEM
   term λ·L_CEM for every (σ, λ) of the grid, **all configurations as one program** (`mijax.stacks`)
   (`mijax.train.fit(..., sweep=True)` over stacked defense states: σ and λ are traced), with the
   reference's augmentation (CIFAR: RandomCrop pad 4, HFlip, RandomRotation 15°; faces without the
   crop) and MultiStepLR milestones (the rate drops at the start of 1-based epochs 60/120/180/210;
   `reference_epoch1_lr0` reproduces the reference's epoch 1 at rate 0). The mixture is refitted
   after every epoch from clean eval-mode features of the augmented training images; the log-det monitor
   (Σπ·(1/D)·log det(Σ + σ²I), averaged over classes) is logged every `monitor_every` epochs.
2. Model selection as the reference does it, on a held-out split instead of the test set: per
   configuration the epoch after `select_after_epoch` with the best noisy accuracy on the last
   `validation_images` training images (never trained on); then accuracy on the test set with
   test-time noise.
3. Attacks on every configuration, one program over the stacked encoders: the noise-aware decoder attack
   (res_normN_AE) in both auxiliary-data settings (training-time: train → test; inference-time:
   test[:90%] → test[90%:]), then the WGAN-GP fine-tuning of the inference-time decoder on the
   training images (the reference's choice), scored on the inference-time targets.
4. Report: per configuration accuracy and attack MSE / SSIM / PSNR (CEM's metric mode: SSIM with
   zero padding, PSNR per batch of 256; MSE per pixel) and the reference's attack accuracy (the
   target's top-1 on the reconstructions), the robustness gain of each λ > 0 over λ = 0
   at equal σ, the log-det curves, reconstruction grids and privacy–utility plots.

Presets: `paper` follows the spec (240 epochs, SGD 0.05 with milestones, lr coupling on, full data,
full decoders, 50 + 150 attack epochs; for a GPU/TPU). `smoke` (7 min 44 s on 2 CPU cores, 12-02) keeps
the spec's optimiser, schedule and lr coupling but trains a VGG at 1/8 width on the first 6,400
training images for 5 epochs (lr 0.05 throughout, so the CEM step is λ·s = λ·0.02), scores on the
first 2,000 test images, and uses small decoders (1 block, 16 channels) trained for 2 epochs on
3,000 training images / 1,800 test images, and 1 GAN epoch. `faces` runs the face-data setting
on the Olivetti faces (64×64 grey, replicated to 3 channels, z ∈ (0,1)^{8×16×16}, 40 identities;
hours on 2 CPU cores: a run with `--set epochs=3 --set decoder_epochs=3 --set gan_epochs=1` took 12
minutes). `cpu` trains converged quarter-width targets (noise alone vs noise + CEM at σ 0.05, 30
epochs on 45,000 images; 40 min on 2 CPU cores, test accuracy 0.78). `tiny` is for tests.
The published table values are unknown (`cem.md` §13): RESULTS.md compares against the abstract's
claim of average robustness gains of 12.9%–48.2%.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from mijax_experiments import common  # noqa: E402
from mijax import data, defenses, metrics, report  # noqa: E402
from mijax.attacks import (BlackBox, DecoderAttackConfig, GanConfig, decoder_attack, gan_finetune,  # noqa: E402
                           train_decoder_attack)
from mijax.attacks.attacker_data import cem_attack_data  # noqa: E402
from mijax.data.transforms import CIFAR10, Normalization  # noqa: E402
from mijax.defenses.conditional_entropy import log_det_monitor  # noqa: E402
from mijax.models import dgwgan32, res_norm_decoder, vgg11_bn_sgm  # noqa: E402
from mijax.train import evaluate, features, fit  # noqa: E402

DATASETS = ("cifar10", "olivetti_faces")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    seed: int = 125
    mesh: str = ""  # device mesh, e.g. "data:4,model:2" ("": all devices on the data axis)
    dataset: str = "cifar10"
    sigmas: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.15)
    lams: tuple[float, ...] = (0.0, 8.0, 16.0)
    # target training (cem.md §9)
    width_multiplier: float = 1.0
    train_images: int = 0                # 0: the whole training split
    epochs: int = 240
    batch_size: int = 128
    learning_rate: float = 0.05
    milestones: tuple[int, ...] = (60, 120, 180, 210, 260)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = True                 # random crop (pad 4), flip, rotation (cem.md §2)
    rotation_degrees: float = 15.0       # RandomRotation(15) of the reference's augmentation
    reference_epoch1_lr0: bool = False   # the reference trains epoch 1 at learning rate 0 (cem.md §9)
    # model selection (cem.md §9): the reference keeps the epoch with the best noisy *test* accuracy
    # after its tracker's last reset (epoch 200); mijax selects on the last `validation_images`
    # training images instead (never trained on). 0: the final epoch's model.
    validation_images: int = 5000
    select_after_epoch: int = 200
    lr_coupling: bool = True             # s(lr) = 1 if lr < 4.1e-4 else 1e-3/lr (cem.md §8)
    num_components: int = 5
    tau: float = 0.125
    monitor_every: int = 10
    monitor_images: int = 2000
    # evaluation and attacks (cem.md §11, §12)
    test_images: int = 0                 # 0: the whole test split
    attack_train_images: int = 0         # training images the attacker uses (training-time, GAN); 0: all
    decoder_epochs: int = 50
    decoder_blocks: int = 8
    decoder_channels: int = 64
    decoder_batch_size: int = 256
    gan_epochs: int = 150
    gan_batch_size: int = 128
    gan_n_critic: int = 10
    critic_width: int = 64

    def validate(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"expected dataset in {DATASETS}, got {self.dataset!r}")
        if not self.sigmas or min(self.sigmas) <= 0:
            raise ValueError(f"expected sigmas > 0 (CEM is defined relative to the noise), got {self.sigmas}")
        if not self.lams or min(self.lams) < 0 or 0.0 not in self.lams:
            raise ValueError(f"expected lams >= 0 including 0 (the noise-only baseline), got {self.lams}")
        if self.epochs < 1 or self.monitor_every < 1:
            raise ValueError(f"expected epochs >= 1 and monitor_every >= 1, got {self.epochs}, "
                             f"{self.monitor_every}")


PRESETS = {
    "paper": Config(),
    "smoke": Config(width_multiplier=0.125, train_images=6400, test_images=2000, epochs=5,
                    monitor_every=1, monitor_images=1000, attack_train_images=3000,
                    validation_images=1000, select_after_epoch=0,
                    decoder_epochs=2, decoder_blocks=1, decoder_channels=16, decoder_batch_size=64,
                    gan_epochs=1, gan_batch_size=64, gan_n_critic=5, critic_width=16),
    # Converged targets on 2 CPU cores (issue 15): noise alone against noise + CEM at one σ, a
    # quarter-width VGG, the whole training split less the 5,000 validation images, 30 epochs with the
    # reference's schedule compressed (×0.2 at epochs 15/23/27), selection after epoch 20, mid-size
    # decoders. Measured 12-02 (RESULTS.md): 40 min on 2 CPU cores (training 32 min), test accuracy
    # 0.780 (λ 0) / 0.759 (λ 16), CEM's attack-MSE gain +38.8–40.2 %.
    "cpu": Config(width_multiplier=0.25, sigmas=(0.05,), lams=(0.0, 16.0), epochs=30, milestones=(15, 23, 27),
                  select_after_epoch=20, monitor_every=5, attack_train_images=10000, decoder_epochs=10,
                  decoder_blocks=2, decoder_channels=32, decoder_batch_size=128, gan_epochs=2,
                  gan_batch_size=64, gan_n_critic=5, critic_width=32),
    "faces": Config(dataset="olivetti_faces", width_multiplier=0.25, epochs=60, batch_size=32,
                    milestones=(30, 45), learning_rate=0.02, monitor_every=5,
                    validation_images=0,  # 40 identities, few images each: all train
                    decoder_epochs=60, decoder_blocks=2, decoder_channels=32, decoder_batch_size=32,
                    gan_epochs=10, gan_batch_size=32, gan_n_critic=5, critic_width=16),
    "tiny": Config(sigmas=(0.05, 0.1), lams=(0.0, 16.0), width_multiplier=0.0625, train_images=256,
                   test_images=200, epochs=2, batch_size=64, lr_coupling=False, monitor_every=1,
                   monitor_images=200, validation_images=64, select_after_epoch=0, decoder_epochs=1, decoder_blocks=0, decoder_channels=8,
                   decoder_batch_size=64, gan_epochs=1, gan_batch_size=32, gan_n_critic=2, critic_width=8),
}


def get_config(preset: str = "smoke") -> Config:
    return common.preset(PRESETS, preset)


def _load(config: Config):
    """Train, validation (the last `validation_images` training images, never trained on; None
    without) and test splits in [0,1] with 3 channels, the normalisation of the edge, the classes."""
    train, test = data.load(config.dataset, "train"), data.load(config.dataset, "test")
    validation = None
    if config.validation_images:
        n = len(train.images) - config.validation_images
        validation = train._replace(images=train.images[n:], labels=train.labels[n:])
        train = train._replace(images=train.images[:n], labels=train.labels[:n])
    if config.train_images:
        train = train._replace(images=train.images[:config.train_images], labels=train.labels[:config.train_images])
    if config.test_images:
        test = test._replace(images=test.images[:config.test_images], labels=test.labels[:config.test_images])
    if config.dataset == "cifar10":
        return train, validation, test, CIFAR10, 10
    rgb = lambda d: d._replace(images=np.repeat(d.images, 3, axis=-1))  # grey faces as the RGB model's input
    train, test = rgb(train), rgb(test)
    validation = rgb(validation) if validation is not None else None
    mean, std = float(train.images.mean()), float(train.images.std())
    return train, validation, test, Normalization(mean=(mean,) * 3, std=(std,) * 3), int(train.labels.max()) + 1


class _Selection:
    """The reference's model selection on a held-out split: per configuration, the epoch (after
    `select_after_epoch`) with the best noisy validation accuracy, its variables kept on the host and
    in `workdir/selection.npz`, so a resumed run keeps what it had selected."""

    def __init__(self, path: pathlib.Path, first_epoch: int):
        self.path, self.first_epoch, self.best = path, first_epoch, None
        if path.exists():
            with np.load(path) as saved:
                self.best = {k: saved[k] for k in saved.files}

    def offer(self, epoch: int, variables, accuracy: np.ndarray) -> None:
        if epoch <= self.first_epoch:
            return
        best_accuracy = np.full(len(accuracy), -1.0) if self.best is None else self.best["accuracy"]
        better = accuracy > best_accuracy
        if not better.any():  # the weights leave the device only when some configuration improved
            return
        gather = multihost_utils.process_allgather if jax.process_count() > 1 else (lambda a, tiled: a)
        leaves = [np.asarray(gather(leaf, tiled=True)) for leaf in jax.tree.leaves(variables)]
        if self.best is None:
            self.best = {"accuracy": best_accuracy, "epoch": np.zeros(len(accuracy), np.int32),
                         **{f"leaf{i}": leaf for i, leaf in enumerate(leaves)}}
        pick = lambda new, old: np.where(better.reshape(-1, *[1] * (new.ndim - 1)), new, old)
        self.best = {"accuracy": np.where(better, accuracy, self.best["accuracy"]),
                     "epoch": np.where(better, epoch, self.best["epoch"]),
                     **{f"leaf{i}": pick(leaf, self.best[f"leaf{i}"]) for i, leaf in enumerate(leaves)}}
        if jax.process_index() == 0:  # the processes of a run hold the same selection
            partial = self.path.with_suffix(".partial.npz")
            np.savez(partial, **self.best)
            partial.replace(self.path)

    def variables(self, like):
        """The selected variables in the structure of `like`."""
        leaves = [self.best[f"leaf{i}"] for i in range(len(jax.tree.leaves(like)))]
        return jax.tree.unflatten(jax.tree.structure(like), leaves)


def grid(config: Config) -> list[tuple[float, float]]:
    """The (σ, λ) configurations in the order of the stacked states: σ-major."""
    return [(s, lam) for s in config.sigmas for lam in config.lams]


def _optimizer(config: Config, steps_per_epoch: int):
    # MultiStepLR as the reference steps it: the rate drops at the start of (1-based) epoch m
    schedule = optax.piecewise_constant_schedule(
        config.learning_rate, {(m - 1) * steps_per_epoch: 0.2 for m in config.milestones})
    if config.reference_epoch1_lr0:
        drop_first = schedule
        schedule = lambda step: jnp.where(step < steps_per_epoch, 0.0, drop_first(step))
    # PyTorch SGD: coupled weight decay added to the gradient before momentum
    return optax.chain(optax.add_decayed_weights(config.weight_decay),
                       optax.sgd(schedule, momentum=config.momentum)), schedule


def _augmentation(config: Config):
    """The reference's training transforms in order: RandomCrop(pad 4) (CIFAR), HFlip, RandomRotation."""
    def augment(key, images):
        crop_key, flip_key, rotation_key = jax.random.split(key, 3)
        if config.dataset == "cifar10":
            images = data.random_crop(crop_key, images, padding=4)
        images = data.random_flip(flip_key, images)
        if config.rotation_degrees:
            images = data.random_rotation(rotation_key, images, degrees=config.rotation_degrees)
        return images
    return augment if config.augment else None


def _monitor(model, variables, defense_states, images, labels, configs) -> list[float]:
    """Class-averaged log-det monitor per configuration (0 before the first mixture fit)."""
    feats = features(model, variables, images, sweep=True)
    values = []
    for m, (sigma, _) in enumerate(configs):
        state = jax.tree.map(lambda a: a[m], defense_states[1])
        if float(state["fitted"]) == 0:
            values.append(float("nan"))
            continue
        per_class = log_det_monitor(feats[m].reshape(len(images), -1), labels, state["mixture"], sigma=sigma)
        values.append(float(jnp.mean(per_class)))
    return values


def _attack_scores(x_hat, targets) -> dict[str, float]:
    scores = metrics.reconstruction_metrics(x_hat, targets, compat="cem")
    return {"mse": float(jnp.mean(scores["mse"])), "ssim": float(jnp.mean(scores["ssim"])),
            "psnr": float(metrics.batch_psnr(x_hat, targets, batch_size=256))}


def _attack_accuracy(model, variables, x_hat, labels) -> list[float]:
    """The reference's "attack accuracy": each target's top-1 on its own reconstructions (eval mode, no
    noise), i.e. how much of the class the reconstructions keep."""
    return [float(evaluate(model, jax.tree.map(lambda a: a[m], variables), x_hat[m], labels,
                           key=jax.random.key(0))) for m in range(len(x_hat))]


def _noisy_oracle(model, variables, noise_state):
    """The attacker's oracle: every deployed edge of the grid with its test-time Gaussian noise."""
    return BlackBox.stacked(model, variables, defense=defenses.gaussian_noise(sigma=0.0), defense_state=noise_state)


@functools.partial(jax.jit, static_argnums=(0,))
def _reconstruct_batch(model, variables, noise_state, decoders, x, key):
    # the weights are arguments, not closures: XLA would constant-fold them into the program
    z = _noisy_oracle(model, variables, noise_state).query(x, key=key)
    return jax.vmap(decoder_attack)(decoders, z)


def _reconstruct(model, variables, noise_state, decoders, images, key,
                 batch_size=256) -> np.ndarray:
    """`[num_models, N, ...]` reconstructions of `images` from fresh noisy queries, batch by batch."""
    return np.concatenate([np.asarray(_reconstruct_batch(model, variables, noise_state, decoders,
                                                         images[s:s + batch_size], jax.random.fold_in(key, s)))
                           for s in range(0, len(images), batch_size)], axis=1)


def run(config: Config, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
    """Trains the grid, attacks every configuration and reports; returns the results."""
    config.validate()
    workdir = pathlib.Path(workdir)
    common.guard_workdir(workdir, config)
    report.write_config(workdir, config, seed=config.seed)
    timings, started = {}, time.perf_counter()
    key = jax.random.key(config.seed)
    train_key, eval_key, attack_key = jax.random.split(key, 3)

    train, validation, test, normalization, num_classes = _load(config)
    image_size = train.images.shape[1]
    model = vgg11_bn_sgm(num_classes=num_classes, image_size=image_size, normalization=normalization,
                         width_multiplier=config.width_multiplier)
    feature_shape = model.feature_shape()
    steps_per_epoch = len(train.images) // config.batch_size
    optimizer, schedule = _optimizer(config, steps_per_epoch)
    configs = grid(config)

    def defense_for(sigma, lam):
        return defenses.cem_with_noise(
            lam=lam, sigma=sigma, num_classes=num_classes, num_components=config.num_components,
            feature_dim=int(np.prod(feature_shape)), tau=config.tau,
            samples_per_class=steps_per_epoch * config.batch_size / num_classes,
            lr_coupling=schedule if config.lr_coupling else None)

    defense = defense_for(*configs[0])  # σ and λ live in the (stacked) state: one program for all
    states = defenses.stack([defense_for(s, lam).init() for s, lam in configs])

    # the log-det monitor, kept on disk so that a resumed run keeps its history
    monitor_path = workdir / "log_det_monitor.json"
    history = json.loads(monitor_path.read_text()) if monitor_path.exists() else {}
    monitor_x, monitor_y = train.images[:config.monitor_images], train.labels[:config.monitor_images]

    mesh = common.mesh_for(config)
    selection = _Selection(workdir / "selection.npz", config.select_after_epoch) if validation else None

    def callback(step, state):
        epoch = step // steps_per_epoch
        if step % steps_per_epoch != 0:
            return
        if epoch % config.monitor_every == 0 or epoch == config.epochs:
            history[str(epoch)] = _monitor(model, state.variables, state.defense_state, monitor_x, monitor_y, configs)
            monitor_path.write_text(json.dumps(history))
        if selection is not None:
            accuracy = evaluate(model, state.variables, validation.images, validation.labels, defense=defense,
                                defense_state=state.defense_state, key=jax.random.fold_in(eval_key, epoch),
                                sweep=True, mesh=mesh)
            selection.offer(epoch, state.variables, np.asarray(accuracy))

    t = time.perf_counter()
    state = fit(model, train.images, train.labels, optimizer=optimizer, epochs=config.epochs,
                batch_size=config.batch_size, key=train_key, defense=defense, defense_state=states,
                sweep=True, augment=_augmentation(config), workdir=workdir / "train",
                callback=callback, progress=progress,
                description=f"train {len(configs)} configurations (one program over σ×λ)", mesh=mesh)
    timings["train"] = time.perf_counter() - t
    if selection is not None:  # the noise state is the same at every epoch: only the weights change
        state = state._replace(variables=selection.variables(state.variables))
    accuracy = evaluate(model, state.variables, test.images, test.labels, defense=defense,
                        defense_state=state.defense_state, key=eval_key, sweep=True, mesh=mesh)

    # attacks: the attacker knows σ and queries the deployed (noisy, eval-mode) edges
    noise_state = state.defense_state[0]
    oracle = _noisy_oracle(model, state.variables, noise_state)
    decoder = res_norm_decoder(feature_shape=feature_shape, image_shape=train.images.shape[1:],
                               num_blocks=config.decoder_blocks, channels=config.decoder_channels,
                               matmul=True)
    rows = [{"sigma": s, "lam": lam, "accuracy": float(accuracy[m])} for m, (s, lam) in enumerate(configs)]
    if selection is not None:
        for m, row in enumerate(rows):
            row.update({"selected epoch": int(selection.best["epoch"][m]),
                        "validation accuracy": float(selection.best["accuracy"][m])})
    grids, decoders = {}, {}
    attacker_train = train
    if config.attack_train_images:
        n = config.attack_train_images
        attacker_train = train._replace(images=train.images[:n], labels=train.labels[:n])
    for i, setting in enumerate(("training-time", "inference-time")):
        aux, targets = cem_attack_data(setting, train=attacker_train, test=test)
        attack_config = DecoderAttackConfig(epochs=config.decoder_epochs,
                                            batch_size=min(config.decoder_batch_size, len(aux.images)))
        t = time.perf_counter()
        decoders[setting] = train_decoder_attack(
            decoder, oracle, aux.images, config=attack_config, key=jax.random.fold_in(attack_key, i),
            workdir=workdir / f"decoder_{setting}", progress=progress, sweep=True, mesh=mesh)
        x_hat = _reconstruct(model, state.variables, noise_state, decoders[setting], targets.images,
                             jax.random.fold_in(eval_key, i))
        timings[f"decoder {setting}"] = time.perf_counter() - t
        attack_accuracy = _attack_accuracy(model, state.variables, x_hat, targets.labels)
        for m, row in enumerate(rows):
            row.update({f"{setting} {k}": v for k, v in _attack_scores(x_hat[m], targets.images).items()},
                       **{f"{setting} attack accuracy": attack_accuracy[m]})
        grids[setting] = (targets.images, x_hat)

    _, targets = cem_attack_data("inference-time", test=test)
    gan_config = GanConfig(epochs=config.gan_epochs, n_critic=config.gan_n_critic,
                           batch_size=min(config.gan_batch_size, len(attacker_train.images)))
    t = time.perf_counter()
    critic = dgwgan32(image_shape=train.images.shape[1:], width=config.critic_width)
    generator = gan_finetune(decoders["inference-time"], critic, oracle, attacker_train.images,
                             config=gan_config, key=jax.random.fold_in(attack_key, 2), workdir=workdir / "gan",
                             progress=progress, sweep=True, mesh=mesh)
    x_hat = _reconstruct(model, state.variables, noise_state, generator, targets.images,
                         jax.random.fold_in(eval_key, 2))
    timings["gan"] = time.perf_counter() - t
    attack_accuracy = _attack_accuracy(model, state.variables, x_hat, targets.labels)
    for m, row in enumerate(rows):
        row.update({f"gan {k}": v for k, v in _attack_scores(x_hat[m], targets.images).items()},
                   **{"gan attack accuracy": attack_accuracy[m]})
    grids["gan"] = (targets.images, x_hat)

    gains = robustness_gains(rows, config)
    extra = {
        "metrics": "CEM mode (cem.md §12): MSE per pixel on [0,1]; SSIM Gaussian 11x11 sigma 1.5 with zero "
                   "padding, mean over images; PSNR per batch of 256 averaged; accuracy top-1 with test-time noise; "
                   "attack accuracy: the target's own top-1 on the reconstructions (eval mode, no noise)",
        "data": f"{config.dataset}: {len(train.images)} training images (the first ones of the split), "
                + (f"the split's last {len(validation.images)} held out for model selection after epoch "
                   f"{config.select_after_epoch}, " if validation is not None else "")
                + f"{len(test.images)} test images (the first ones); inference-time setting: attacker trains on "
                f"test[:90%] and is scored on test[90%:]; training-time: attacker trains on the first "
                f"{len(attacker_train.images)} training images, scored on all test images; GAN: starts from the "
                f"inference-time decoder, trained on those training images, scored on test[90%:]",
        "seconds": {k: round(v, 1) for k, v in {**timings, "total": time.perf_counter() - started}.items()},
    }
    report.write_results(workdir, rows, extra={**extra, "gains": gains, "log_det_monitor": history})
    (workdir / "tables.md").write_text(tables_markdown(rows, gains, extra))
    _figures(workdir, config, rows, grids, history, configs)
    return {"rows": rows, "gains": gains, "log_det_monitor": history, **extra}


ATTACKS = ("training-time", "inference-time", "gan")


def robustness_gains(rows, config: Config) -> list[dict]:
    """Per σ and λ > 0: the relative increase of attack MSE over λ = 0 and the SSIM/PSNR changes."""
    by_key = {(r["sigma"], r["lam"]): r for r in rows}
    gains = []
    for sigma in config.sigmas:
        base = by_key[(sigma, 0.0)]
        for lam in (lam for lam in config.lams if lam > 0):
            row = by_key[(sigma, lam)]
            gain = {"sigma": sigma, "lam": lam, "accuracy change": row["accuracy"] - base["accuracy"]}
            for attack in ATTACKS:
                gain[f"{attack} mse gain %"] = 100 * (row[f"{attack} mse"] / base[f"{attack} mse"] - 1)
                gain[f"{attack} ssim change"] = row[f"{attack} ssim"] - base[f"{attack} ssim"]
                gain[f"{attack} psnr change"] = row[f"{attack} psnr"] - base[f"{attack} psnr"]
            gains.append(gain)
    return gains


SETTING_FIELDS = ("sigma", "lam")   # the numbers that name a row (`mijax report --seeds` matches on them)


def claims(results) -> dict[str, bool]:
    """CEM's claim per σ, λ and attack, true or false in one run (`mijax report --seeds` counts them):
    noise + CEM leaves the attack a larger reconstruction MSE than noise alone at the same σ."""
    return {f"σ {g['sigma']}, λ {g['lam']}: CEM raises the {attack} attack's MSE over noise alone":
            g[f"{attack} mse gain %"] > 0 for g in results["gains"] for attack in ATTACKS}


def report_markdown(results) -> str:
    """`mijax report`: the tables of a finished run from its results.json."""
    return tables_markdown(results["rows"], results["gains"], results)


def tables_markdown(rows, gains, extra) -> str:
    columns = ["sigma", "lam", "accuracy"] + [f"{a} {m}" for a in ATTACKS
                                              for m in ("mse", "ssim", "psnr", "attack accuracy")]
    gain_columns = ["sigma", "lam", "accuracy change"] + [f"{a} mse gain %" for a in ATTACKS] + \
                   [f"{a} ssim change" for a in ATTACKS]
    mean_gain = {a: float(np.mean([g[f"{a} mse gain %"] for g in gains])) for a in ATTACKS} if gains else {}
    lines = ["## Accuracy and attacks per configuration", "", report.format_table(rows, columns), "",
             "## Robustness gain of CEM over noise alone (same σ)", "", report.format_table(gains, gain_columns), "",
             "Average attack-MSE gain over all (σ, λ > 0): "
             + ", ".join(f"{a} {v:+.1f}%" for a, v in mean_gain.items())
             + " (the abstract claims average gains of 12.9%–48.2%; the paper's tables are unknown).", "",
             f"Metrics: {extra['metrics']}.", "", f"Data: {extra['data']}.", "",
             f"Seconds: {extra['seconds']}."]
    return "\n".join(lines) + "\n"


def _figures(workdir, config, rows, grids, history, configs):
    lams = sorted(set(config.lams))
    show = [(s, lam) for s in config.sigmas for lam in (lams[0], lams[-1])]
    for name, (targets, x_hat) in grids.items():
        report.reconstruction_grid(workdir / f"reconstructions_{name}.png", targets,
                                   {f"σ={s:g} λ={lam:g}": x_hat[configs.index((s, lam))] for s, lam in show},
                                   title=f"{name} attack reconstructions (noise + CEM)")
    for attack in ("inference-time", "gan"):
        plot_rows = [{**r, "defense": f"λ={r['lam']:g}" + (" (noise only)" if r["lam"] == 0 else " (CEM)")}
                     for r in rows]
        report.privacy_utility_plot(workdir / f"privacy_utility_{attack}.png", plot_rows, x="sigma",
                                    privacy=f"{attack} ssim", group="defense", xlabel="noise σ",
                                    title=f"CEM vs noise alone: {attack} attack SSIM and accuracy")
    if history:
        epochs = sorted(int(e) for e in history)
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for m, (s, lam) in enumerate(configs):
            ax.plot(epochs, [history[str(e)][m] for e in epochs], ["-", "--", ":"][lams.index(lam) % 3],
                    color=f"C{config.sigmas.index(s)}", label=f"σ={s:g} λ={lam:g}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("Σπ·(1/D)·log det(Σ + σ²I), class mean")
        ax.set_title("CEM log-det monitor (lower = more robust)", fontsize=9)
        ax.legend(fontsize=6, ncol=3)
        fig.tight_layout()
        fig.savefig(workdir / "log_det_monitor.png", dpi=110)
        plt.close(fig)
