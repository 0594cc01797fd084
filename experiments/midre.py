"""MIDRE (Tran et al., TMLR 2025): random erasing against training-data inversion, and in split inference.

Command: `mijax run midre --preset smoke|paper|tiny` (reads MNIST/CIFAR-10 from `$MIJAX_DATA_DIR`).
Cost: `smoke` about 15 minutes on 2 CPU cores (MNIST only, reduced data, MLP GAN priors, 300 attack
iterations, 2 seeds; every budget stated in the config); `paper` runs MNIST and CIFAR-10 with the
reference budgets (conv GANs, 300/100 GAN epochs, 1,500 GMI and 5,000 KEDMI iterations) and is meant
for a GPU/TPU; `tiny` is the CI check that every part runs and writes every report file.

Setting (the GMI/KEDMI references): digits 0-4 (CIFAR-10 classes 0-4) are private, the target
(LeNet / CIFAR10CNN, 5 classes) is trained on them; 5-9 are public, the GAN priors' images. An
independent evaluation classifier of another architecture (digits CNN / ResNet-20), trained without
defense, scores the reconstructions: on all ten classes by default (BiDO's DMI configuration, the
spec's update), or on the private classes only (`evaluator_classes="private"`, the GMI paper's
wording); top-k then needs `top_k` below 5, since top-5 of five classes is always 1.

Track 1 (MIDRE's own threat model, white-box release of the classifier), per defense and seed:
natural accuracy on the private test classes; GMI and KEDMI attack accuracy (top-1/top-`top_k` of the
evaluator over every reconstruction, no FID filter) and KNN distance (min squared feature distance to
the private training images of the class). Defenses: none; random erasing with area U[0.1, 0.4] and
U[0.1, 0.8] (p = 1, squares, the MIDRE fill in normalised space); the ablations fixed location (the
square at the centre) and full erasure of the same expected area (p = 0.25 of whole images); negative
label smoothing (reference schedule, scaled to the run's epochs); BiDO (HSIC on three hidden
layers, (λ_x, λ_y) = (0.05, 0.5)) and MID (VIB with β = 0.01 on the penultimate features, the code's
mean at inference) when their modules
(`mijax.defenses.bido`, `mijax.defenses.mid`) exist (otherwise listed under `skipped`).
KEDMI's prior in `smoke`/`tiny` (`kedmi_generator="gmi"`) is its K+1-class discriminator trained with
KEDMI's loss against GMI's frozen generator: at CPU budgets KEDMI's own feature-matching generator
collapses to one image (measured); `paper` trains the reference GAN (`"kedmi"`).

Track 2 (split inference, a mijax extension): the edge of the same targets (cut `split_cut`), the
decoder attack (trained on public images queried through the deployed edge) and white-box rMLE
reconstruct clean private test images from z̃: PSNR and SSIM per defense.

Expected (abstract's claims): random erasing lowers GMI/KEDMI attack accuracy a lot at a moderate
natural-accuracy cost; partial erasure and a random location both matter. Measured: RESULTS.md.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import time
from typing import Callable, NamedTuple

import jax
import numpy as np
import optax

from mijax_experiments import common
from mijax import data, defenses, losses, metrics, report
from mijax.attacks import WhiteBox, rmle, RMLEConfig
from mijax.attacks.evaluation import evaluator_outputs, inversion_scores
from mijax.attacks.gmi import GmiConfig, PriorConfig, gmi_attack, train_gmi_prior
from mijax.attacks.kedmi import KedmiConfig, KedmiPriorConfig, kedmi_attack, train_kedmi_prior
from mijax.attacks.knowledge import BlackBox
from mijax.attacks.noise_aware_decoder import DecoderAttackConfig, decoder_attack, train_decoder_attack
from mijax.attacks.released import ReleasedClassifier
from mijax.models import (cifar10cnn, decoder_for, dgwgan32, digits_cnn, kedmi_discriminator, lenet, mlp_critic,
                          mlp_generator, resnet20_cem)
from mijax.train import evaluate, fit

PRIVATE = (0, 1, 2, 3, 4)
DEFENSES = ("none", "erasing_0.4", "erasing_0.8", "erasing_fixed", "full_erasure", "nls", "bido", "mid")


class Setup(NamedTuple):
    target: Callable
    evaluator: Callable
    feature_layer: str
    fill: tuple[float, ...]
    split_cut: str
    mid_cut: str             # MID's bottleneck sits on the target's penultimate features
    bido_taps: tuple[str, ...]


SETUPS = {
    "mnist": Setup(lambda cut="relu2": lenet(cut=cut, num_classes=5),
                   lambda classes: digits_cnn(cut="relu4", num_classes=classes, image_size=28), "relu4", (0.485,), "conv1",
                   "relu4", ("relu1", "relu2", "relu3")),
    "cifar10": Setup(lambda cut="relu22": cifar10cnn(cut=cut, num_classes=5),
                     lambda classes: resnet20_cem(cut="pool", num_classes=classes, image_size=32), "pool",
                     (0.485, 0.456, 0.406), "relu22", "fc1_sigmoid", ("relu11", "relu22", "relu32")),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """MIDRE settings (module docstring). Budgets are per preset; the names say what they count."""

    datasets: tuple[str, ...] = ("mnist",)
    defenses: tuple[str, ...] = DEFENSES
    seeds: tuple[int, ...] = (0, 1)
    num_private: int = 3000          # private training images (classes 0-4); 0: all
    num_public: int = 3000           # public images (classes 5-9) for the GAN priors; 0: all
    num_evaluator: int = 6000        # evaluator training images (of `evaluator_classes`); 0: all
    evaluator_classes: str = "all"   # "all": ten classes (BiDO's DMI config); "private": classes 0-4
    top_k: int = 5                   # the attack accuracy's top-k (5 in the references)
    num_test: int = 1000             # private-class test images for natural accuracy
    target_epochs: int = 4
    target_learning_rate: float = 1e-3
    evaluator_epochs: int = 3
    batch_size: int = 64
    nls_alpha: float = -0.05
    mid_beta: float = 0.01           # CEM's vendored values 0.003, 0.01, 0.02
    bido_lambda_x: float = 0.05      # BiDO's example (lambda_x, lambda_y) = (0.05, 0.5)
    bido_lambda_y: float = 0.5
    gan: str = "mlp"                 # "mlp" (CPU) or "conv" (decoder_for generator, DGWGAN32 / KEDMI critic)
    gan_width: int = 128
    gmi_prior_epochs: int = 30
    gmi_prior_learning_rate: float = 4e-3
    gmi_iterations: int = 300
    gmi_restarts: int = 4
    kedmi_prior_epochs: int = 10
    kedmi_prior_learning_rate: float = 1e-3
    kedmi_generator: str = "gmi"     # "kedmi": the reference (D and feature-matching G); "gmi": D only, on GMI's G
    kedmi_iterations: int = 300
    kedmi_samples: int = 4
    split_defenses: tuple[str, ...] = ("none", "erasing_0.4", "erasing_0.8")
    split_images: int = 10           # private test images reconstructed from z̃ (first of each class, twice)
    rmle_steps: int = 300
    decoder_epochs: int = 5
    mesh: str = ""


PRESETS = {
    "tiny": Config(defenses=("erasing_0.4",), seeds=(0,), num_private=256, num_public=256, num_evaluator=512,
                   num_test=128, target_epochs=1, evaluator_epochs=1, gmi_prior_epochs=1, gmi_iterations=3,
                   gmi_restarts=2, kedmi_prior_epochs=1, kedmi_iterations=3, kedmi_samples=2, gan_width=32,
                   split_defenses=("erasing_0.4",), split_images=5, rmle_steps=3, decoder_epochs=1),
    "smoke": Config(),
    "paper": Config(datasets=("mnist", "cifar10"), seeds=(0, 1, 2), num_private=0, num_public=0, num_evaluator=0,
                    num_test=0, target_epochs=100, gan="conv", gan_width=64, gmi_prior_epochs=300,
                    kedmi_prior_epochs=100, gmi_iterations=1500, gmi_restarts=5, kedmi_iterations=5000,
                    kedmi_prior_learning_rate=2e-4, kedmi_generator="kedmi", kedmi_samples=5, rmle_steps=5000,
                    decoder_epochs=50),
}


def get_config(preset: str = "smoke") -> Config:
    return common.preset(PRESETS, preset)


def _first(n):
    return slice(None) if n == 0 else slice(0, n)


def _defense(name: str, setup: Setup, config: Config, steps_per_epoch: int):
    """`(defense, task_loss)` of a defense name, or None when its module is not in this checkout."""
    if name == "none":
        return None, losses.cross_entropy
    if name.startswith("erasing_") and name != "erasing_fixed":
        high = float(name.split("_")[1])
        return defenses.random_erasing(area=(0.1, high), fill=setup.fill), losses.cross_entropy
    if name == "erasing_fixed":
        return defenses.random_erasing(area=(0.1, 0.4), fill=setup.fill, location="center"), losses.cross_entropy
    if name == "full_erasure":   # the same expected erased area as U[0.1, 0.4]: E[a] = 0.25
        return defenses.full_erasing(p=0.25, fill=setup.fill), losses.cross_entropy
    if name == "nls":   # reference: 0 before epoch 50 of 100, ramp, α from 75: scaled to the run
        start = max(0, round(0.5 * config.target_epochs))
        end = max(start + 1, round(0.75 * config.target_epochs))
        schedule = losses.negative_smoothing_schedule(alpha=config.nls_alpha, steps_per_epoch=steps_per_epoch,
                                                      start_epoch=start, end_epoch=end, reference=True,
                                                      epochs=config.target_epochs)
        return None, losses.label_smoothing(epsilon=schedule)
    if name in ("bido", "mid"):
        if importlib.util.find_spec(f"mijax.defenses.{name}") is None:
            return None
        if name == "mid":   # VIB before the last layers (the reference's penultimate features), beta 0.01
            return defenses.vib_bottleneck(beta=config.mid_beta, sample_at_inference=False), losses.cross_entropy
        return (defenses.bilateral_dependency(lambda_x=config.bido_lambda_x, lambda_y=config.bido_lambda_y,
                                              taps=setup.bido_taps, normalization=setup.target().normalization),
                losses.cross_entropy)
    raise ValueError(f"unknown defense {name!r}; valid: {', '.join(DEFENSES)}")


def _priors(config: Config, image_shape, num_classes: int):
    if config.gan == "mlp":
        w = config.gan_width
        generator = mlp_generator(latent_dim=100, image_shape=image_shape, hidden=(w, 2 * w)).as_pure()
        return (generator, mlp_critic(image_shape=image_shape, hidden=(2 * w, w)).as_pure(),
                mlp_critic(image_shape=image_shape, hidden=(2 * w, w), outputs=num_classes, minibatch=(16, 8)))
    generator = decoder_for((100,), image_shape, width=config.gan_width)
    return (generator, dgwgan32(image_shape=image_shape, width=config.gan_width),
            kedmi_discriminator(image_shape=image_shape, num_classes=num_classes, width=config.gan_width))


def _split_track(name, setup, model, variables, defense_name, test_x, public_x, config, key, workdir, progress):
    cut_model = model.with_cut(setup.split_cut)
    oracle = BlackBox.from_model(cut_model, variables)
    z = oracle.query(test_x)
    rows = []
    x_rmle = rmle(WhiteBox.from_model(cut_model, variables), z, config=RMLEConfig(num_steps=config.rmle_steps))
    decoder = decoder_for(cut_model.feature_shape(), cut_model.input_shape, width=32)
    trained = train_decoder_attack(decoder, oracle, public_x, config=DecoderAttackConfig(
        epochs=config.decoder_epochs, batch_size=min(128, len(public_x))), key=key,
        workdir=workdir / "decoder", progress=progress)
    x_dec = decoder_attack(trained, z)
    recon = {}
    for attack, x_hat in (("rMLE", x_rmle), ("decoder", x_dec)):
        x_hat = np.clip(np.asarray(x_hat), 0, 1)
        recon[f"{defense_name} {attack}"] = x_hat
        rows.append({"table": "split inference", "dataset": name, "defense": defense_name, "cut": setup.split_cut,
                     "attack": attack, "psnr": float(np.mean(metrics.psnr(x_hat, test_x))),
                     "ssim": float(np.mean(metrics.ssim(x_hat, test_x)))})
    return rows, recon


def _scatter(path, summary, attack):
    plt = report._pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for i, r in enumerate(summary):
        ax.errorbar(r["natural_accuracy"], r[f"{attack}_top1"], xerr=r["natural_accuracy_std"],
                    yerr=r[f"{attack}_top1_std"], fmt="o", color=f"C{i}", label=r["defense"])
    ax.set_xlabel("natural accuracy (private test classes)")
    ax.set_ylabel(f"{attack.upper()} attack accuracy (top-1)")
    ax.legend(fontsize=7)
    ax.set_title(f"{summary[0]['dataset']}: privacy-utility ({attack.upper()})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(config: Config, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
    """Trains evaluator, priors and defended targets, runs GMI, KEDMI and the split-inference attacks."""
    _check_evaluator_settings(config)
    workdir = pathlib.Path(workdir)
    common.guard_workdir(workdir, config)
    report.write_config(workdir, config, seed=config.seeds[0])
    started = time.perf_counter()
    rows, summary_rows, skipped, timings = [], [], [], {}
    topk = f"top{config.top_k}"
    for d, name in enumerate(config.datasets):
        if name not in SETUPS:
            raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(SETUPS)}")
        setup = SETUPS[name]
        root = jax.random.fold_in(jax.random.key(0), d)
        train_set, test_set = data.load(name, "train"), data.load(name, "test")
        private = np.isin(train_set.labels, PRIVATE)
        x_private, y_private = (a[private][_first(config.num_private)] for a in (train_set.images, train_set.labels))
        x_public = train_set.images[~private][_first(config.num_public)]
        test_private = np.isin(test_set.labels, PRIVATE)
        x_test, y_test = (a[test_private][_first(config.num_test)] for a in (test_set.images, test_set.labels))
        split_index = np.concatenate([np.nonzero(y_test == c)[0][:2] for c in PRIVATE])[:config.split_images]
        split_x = x_test[split_index]
        phase = time.perf_counter()
        x_eval, y_eval, x_eval_test, y_eval_test = train_set.images, train_set.labels, test_set.images, test_set.labels
        if config.evaluator_classes == "private":
            x_eval, y_eval = x_eval[private], y_eval[private]
            x_eval_test, y_eval_test = x_eval_test[test_private], y_eval_test[test_private]
        evaluator = setup.evaluator(10 if config.evaluator_classes == "all" else len(PRIVATE))
        evaluator_state = fit(evaluator, x_eval[_first(config.num_evaluator)],
                              y_eval[_first(config.num_evaluator)], optimizer=optax.adam(1e-3),
                              epochs=config.evaluator_epochs, batch_size=config.batch_size,
                              key=jax.random.fold_in(root, 1), workdir=workdir / name / "evaluator",
                              progress=progress, description="evaluator")
        evaluator_variables = evaluator_state.variables
        evaluator_accuracy = float(evaluate(evaluator, evaluator_variables, x_eval_test[:2000],
                                            y_eval_test[:2000], key=root))
        _, private_features = evaluator_outputs(evaluator, evaluator_variables, x_private,
                                                feature_layer=setup.feature_layer)
        image_shape = x_private.shape[1:]
        generator, critic, discriminator = _priors(config, image_shape, len(PRIVATE))
        gmi_prior = train_gmi_prior(generator, critic, x_public, config=PriorConfig(
            epochs=config.gmi_prior_epochs, batch_size=config.batch_size,
            learning_rate=config.gmi_prior_learning_rate), key=jax.random.fold_in(root, 2),
            workdir=workdir / name / "gmi_prior", progress=progress)
        if config.kedmi_generator not in ("kedmi", "gmi"):
            raise ValueError(f"expected kedmi_generator 'kedmi' or 'gmi', got {config.kedmi_generator!r}")
        timings[f"{name} evaluator and GMI prior"] = round(time.perf_counter() - phase, 1)
        targets = np.arange(len(PRIVATE))
        originals = np.stack([x_private[np.nonzero(y_private == c)[0][0]] for c in PRIVATE])
        grids = {"gmi": {}, "kedmi": {}}
        split_grid = {}
        steps_per_epoch = len(x_private) // config.batch_size
        for defense_name in config.defenses:
            built = _defense(defense_name, setup, config, steps_per_epoch)
            if built is None:
                skipped.append(f"{name} {defense_name}: mijax.defenses.{defense_name} is not in this checkout")
                continue
            defense, task_loss = built
            phase = time.perf_counter()
            for seed in config.seeds:
                key = jax.random.fold_in(jax.random.fold_in(root, 100 + seed), DEFENSES.index(defense_name))
                run_dir = workdir / name / defense_name / f"seed{seed}"
                model = setup.target(setup.mid_cut) if defense_name == "mid" else setup.target()
                state = fit(model, x_private, y_private, optimizer=optax.adam(config.target_learning_rate),
                            epochs=config.target_epochs, batch_size=config.batch_size, key=key, defense=defense,
                            task_loss=task_loss, workdir=run_dir / "target", progress=progress,
                            description=f"{defense_name} target")
                variables = state.variables
                accuracy = float(evaluate(model, variables, x_test, y_test, defense=defense,
                                          defense_state=state.defense_state, key=key))
                classifier = ReleasedClassifier.from_model(model, variables, defense=defense,
                                                           defense_state=state.defense_state)
                gmi = gmi_attack(classifier, gmi_prior, targets, key=jax.random.fold_in(key, 1), config=GmiConfig(
                    iterations=config.gmi_iterations, restarts=config.gmi_restarts))
                own = config.kedmi_generator == "kedmi"
                kedmi_prior = train_kedmi_prior(
                    generator, discriminator, classifier, x_public, config=KedmiPriorConfig(
                        epochs=config.kedmi_prior_epochs, batch_size=config.batch_size,
                        learning_rate=config.kedmi_prior_learning_rate, train_generator=own),
                    generator_variables=None if own else gmi_prior.generator_variables,
                    key=jax.random.fold_in(key, 2), workdir=run_dir / "kedmi_prior", progress=progress)
                kedmi = kedmi_attack(classifier, kedmi_prior, targets, key=jax.random.fold_in(key, 3),
                                     config=KedmiConfig(iterations=config.kedmi_iterations,
                                                        samples=config.kedmi_samples))
                row = {"table": "training-data inversion", "dataset": name, "defense": defense_name, "seed": seed,
                       "natural_accuracy": accuracy}
                for attack, result in (("gmi", gmi), ("kedmi", kedmi)):
                    images = np.asarray(result.images)
                    per_target = images.shape[1]
                    scores = inversion_scores(evaluator, evaluator_variables, images.reshape(-1, *image_shape),
                                              np.repeat(targets, per_target), private_images=x_private,
                                              private_labels=y_private, feature_layer=setup.feature_layer,
                                              private_features=private_features, top_k=config.top_k)
                    row.update({f"{attack}_top1": scores["top1"], f"{attack}_{topk}": scores[topk],
                                f"{attack}_knn": scores["knn_distance"]})
                    if seed == config.seeds[0]:
                        grids[attack][defense_name] = np.asarray(result.best_images())
                rows.append(row)
                if defense_name in config.split_defenses and seed == config.seeds[0]:
                    split_rows, recon = _split_track(name, setup, model, variables, defense_name, split_x, x_public,
                                                     config, jax.random.fold_in(key, 4), run_dir, progress)
                    rows += split_rows
                    split_grid.update(recon)
            timings[f"{name} {defense_name}"] = round(time.perf_counter() - phase, 1)
            members = [r for r in rows if r["table"] == "training-data inversion" and r["dataset"] == name
                       and r["defense"] == defense_name]
            summary = {"dataset": name, "defense": defense_name, "seeds": len(members)}
            for field in _summary_fields(topk):
                values = np.array([m[field] for m in members])
                summary[field], summary[f"{field}_std"] = float(values.mean()), float(values.std())
            summary_rows.append(summary)
        for attack in ("gmi", "kedmi"):
            report.reconstruction_grid(workdir / f"{name}_{attack}_reconstructions.png", originals, grids[attack],
                                       title=f"{name}: {attack.upper()} per target class (best of seed "
                                             f"{config.seeds[0]}) per defense")
            _scatter(workdir / f"{name}_{attack}_privacy_utility.png",
                     [s for s in summary_rows if s["dataset"] == name], attack)
        if split_grid:
            report.reconstruction_grid(workdir / f"{name}_split_reconstructions.png", split_x, split_grid,
                                       title=f"{name}: reconstructions from z̃ at {setup.split_cut}")
        timings[f"{name} evaluator accuracy"] = evaluator_accuracy
    extra = {"summary": summary_rows, "skipped": skipped, "seconds": round(time.perf_counter() - started, 1),
             "seconds_per_phase": timings, "top_k": config.top_k,
             "evaluation": f"evaluator ({config.evaluator_classes} classes) top-1/top-{config.top_k} over every "
                           "reconstruction (no FID filter); KNN: mean min squared L2 distance in the evaluator's "
                           "penultimate features to the private training images of the target class"}
    report.write_results(workdir, rows, extra=extra)
    (workdir / "tables.md").write_text(tables_markdown(rows, extra))
    return {"rows": rows, **extra}


def _check_evaluator_settings(config: Config) -> None:
    if config.evaluator_classes not in ("all", "private"):
        raise ValueError(f"expected evaluator_classes 'all' or 'private', got {config.evaluator_classes!r}")
    classes = 10 if config.evaluator_classes == "all" else len(PRIVATE)
    if not 1 < config.top_k < classes:
        raise ValueError(f"top_k={config.top_k} must lie between 2 and {classes - 1} for an evaluator of {classes} "
                         f"classes (evaluator_classes={config.evaluator_classes!r}): top-{classes} is always 1")


def _summary_fields(topk: str) -> tuple[str, ...]:
    return ("natural_accuracy", "gmi_top1", f"gmi_{topk}", "gmi_knn", "kedmi_top1", f"kedmi_{topk}", "kedmi_knn")


def report_markdown(results) -> str:
    """`mijax report`: the tables of a finished run from its results.json, with how they were scored."""
    rows = results["rows"]
    extra = {"top_k": 5, "skipped": [], **{k: v for k, v in results.items() if k != "rows"}}
    accuracies = {k: v for k, v in results.get("seconds_per_phase", {}).items() if k.endswith("evaluator accuracy")}
    notes = [f"Scoring: {results['evaluation']}." if "evaluation" in results else ""]
    notes += [f"{name}: {accuracy:.4g} (test accuracy)" for name, accuracy in accuracies.items()]
    return tables_markdown(rows, extra) + "\n" + "\n".join(n for n in notes if n) + "\n"


def tables_markdown(rows, extra) -> str:
    """The per-defense summary (mean ± std over seeds) and the split-inference table."""
    k = extra.get("top_k", 5)
    out = ["### Training-data inversion (mean ± std over seeds)", "",
           f"| dataset | defense | seeds | natural acc | GMI top-1 | GMI top-{k} | GMI KNN | KEDMI top-1 "
           f"| KEDMI top-{k} | KEDMI KNN |", "|" + "---|" * 10]
    for s in extra["summary"]:
        cell = lambda f: f"{s[f]:.3g} ± {s[f + '_std']:.2g}"
        out.append(f"| {s['dataset']} | {s['defense']} | {s['seeds']} | " + " | ".join(
            cell(f) for f in _summary_fields(f"top{k}")) + " |")
    split = [r for r in rows if r["table"] == "split inference"]
    if split:
        out += ["", "### Split inference: reconstruction of private test images from z̃", "",
                "| dataset | defense | cut | attack | PSNR | SSIM |", "|---|---|---|---|---|---|"]
        out += [f"| {r['dataset']} | {r['defense']} | {r['cut']} | {r['attack']} | {r['psnr']:.2f} | {r['ssim']:.3f} |"
                for r in split]
    if extra["skipped"]:
        out += ["", "Skipped: " + "; ".join(extra["skipped"])]
    return "\n".join(out) + "\n"
