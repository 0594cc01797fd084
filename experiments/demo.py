"""The main job: privacy–utility trade-off of Gaussian feature noise on the embedded digits data.

Command: `mijax demo` (or `mijax run demo`), no download. Expected: about 45 s on 2 CPU cores.

Trains the split digits CNN (`mijax.models.digits_cnn`, edge = conv → ReLU → pool → conv → sigmoid)
with training-time Gaussian noise on the transmitted features, one model per σ, all σ in one
program (`mijax.stacks`); then runs He et al.'s white-box rMLE attack on held-out test images
against each model's noisy features (fresh noise, unperturbed edge) and reports test accuracy (with noise) and the
attack's SSIM/PSNR/MSE per σ. The 8×8 digits are upsampled bilinearly to 32×32 so that SSIM uses its
canonical 11×11 Gaussian window on every image.

Expected result: at σ = 0 the reconstructions are recognisable digits (SSIM well above 0.6); as σ
grows the attack's SSIM falls, and so does accuracy.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mijax_experiments import common
from mijax import data, defenses, metrics, report
from mijax.attacks import RMLEConfig, WhiteBox, rmle
from mijax.models import digits_cnn
from mijax.stacks import map_models
from mijax.pipeline import transmit
from mijax.train import evaluate, fit


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    seed: int = 0
    image_size: int = 32
    cut: str = "sigmoid"
    sigmas: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 1.0)
    epochs: int = 12
    batch_size: int = 64
    learning_rate: float = 2e-3
    attack_images: int = 20
    attack_steps: int = 400
    attack_learning_rate: float = 0.05
    attack_tv_weight: float = 0.05
    mesh: str = ""  # device mesh, e.g. "data:4,model:2" ("": all devices on the data axis)


PRESETS = {
    "default": Config(),
    "tiny": Config(sigmas=(0.0, 0.5), epochs=1, attack_images=4, attack_steps=20),
}


def get_config(preset: str = "default") -> Config:
    return common.preset(PRESETS, preset)


def _load(split: str, size: int):
    dataset = data.load("digits", split)
    images = np.asarray(data.resize(dataset.images, (size, size)))
    return np.clip(images, 0.0, 1.0), dataset.labels


def run(config: Config, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
    """Trains, attacks and reports; returns the results (also written to `workdir`)."""
    workdir = pathlib.Path(workdir)
    common.guard_workdir(workdir, config)
    report.write_config(workdir, config, seed=config.seed)
    started = time.perf_counter()
    key = jax.random.key(config.seed)
    train_key, eval_key, attack_key = jax.random.split(key, 3)

    train_x, train_y = _load("train", config.image_size)
    test_x, test_y = _load("test", config.image_size)
    model = digits_cnn(cut=config.cut, image_size=config.image_size)
    defense = defenses.gaussian_noise(sigma=0.0)
    noise_states = defenses.stack([defenses.gaussian_noise(sigma=s).init() for s in config.sigmas])

    state = fit(model, train_x, train_y, optimizer=optax.adam(config.learning_rate),
                epochs=config.epochs, batch_size=config.batch_size, key=train_key, defense=defense,
                defense_state=noise_states, sweep=True, workdir=workdir / "train", progress=progress,
                description=f"train {len(config.sigmas)} models (one program over sigma)",
                mesh=common.mesh_for(config))
    accuracy = evaluate(model, state.variables, test_x, test_y, defense=defense,
                        defense_state=noise_states, key=eval_key, sweep=True, mesh=common.mesh_for(config))

    targets = jnp.asarray(test_x[:config.attack_images])
    attack_config = RMLEConfig(num_steps=config.attack_steps, learning_rate=config.attack_learning_rate,
                               tv_weight=config.attack_tv_weight)

    def attack_one(variables, noise_state, targets, key):  # arguments, not closures: no constant folding
        z_tilde = transmit(model, variables, targets, defense=defense, defense_state=noise_state, key=key).z_tilde
        return rmle(WhiteBox.from_model(model, variables), z_tilde, config=attack_config)

    attack = jax.jit(map_models(attack_one, (0, 0, None, None)))  # one model per σ

    x_hat = np.asarray(attack(state.variables, noise_states, targets, attack_key))
    rows = []
    for i, sigma in enumerate(config.sigmas):
        scores = metrics.reconstruction_metrics(x_hat[i], np.asarray(targets))
        rows.append({"sigma": sigma, "accuracy": float(accuracy[i]),
                     **{name: float(np.mean(v)) for name, v in scores.items()}})

    extra = {"ssim": "canonical (Gaussian 11x11, sigma 1.5, valid) on 32x32 bilinear-upsampled digits",
             "attack_images": f"first {config.attack_images} images of the digits test split",
             "seconds": round(time.perf_counter() - started, 1)}
    report.write_results(workdir, rows, extra=extra)
    report.reconstruction_grid(workdir / "reconstructions.png", np.asarray(targets),
                               {f"σ={s:g}": x_hat[i] for i, s in enumerate(config.sigmas)},
                               title="rMLE reconstructions (white-box, noisy features)")
    report.privacy_utility_plot(workdir / "privacy_utility.png", rows, x="sigma", xlabel="noise σ",
                                title="Gaussian feature noise on digits: attack SSIM vs accuracy")
    return {"rows": rows, **extra}
