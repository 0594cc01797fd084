"""SiftFunnel, MID and BiDO against the decoder attack, beside the unprotected CNN, on the real digits.

One shared fixture: `classifier_4` (width 8) cut at block 2 and the funnel `pv4_classifier_4`
(width 8) cut at its funnel, at 16×16, each trained 6 epochs with Adam; MID and BiDO on the
unprotected CNN's z. The attacker trains a decoder (`decoder_for`, 4 epochs) on queries of each
deployed edge with the training images and decodes the 360 test images.
"""

import jax
import numpy as np
import optax
import pytest

from mijax import data, defenses, losses, metrics
from mijax.attacks import BlackBox, DecoderAttackConfig, decoder_attack, train_decoder_attack
from mijax.data.transforms import MNIST_HALF
from mijax.models import classifier_4, decoder_for, pv4_classifier_4
from mijax.train import evaluate, fit

SIZE = 16


@pytest.fixture(scope="module")
def outcomes():
    resize = lambda v: np.clip(np.asarray(data.resize(v, (SIZE, SIZE))), 0, 1)
    train, test = data.load("digits", "train"), data.load("digits", "test")
    x, y, xt, yt = resize(train.images), train.labels, resize(test.images), test.labels
    kw = dict(image_size=SIZE, width=8, channels=1, normalization=MNIST_HALF)
    plain, funnel = classifier_4(**kw), pv4_classifier_4(**kw)
    runs = {"unprotected": (plain, None, losses.cross_entropy),
            "siftfunnel": (funnel, defenses.siftfunnel_objective(normalization=MNIST_HALF), defenses.no_task_loss),
            "mid": (plain, defenses.vib_bottleneck(beta=1e-4), losses.cross_entropy),
            "bido": (plain, defenses.bilateral_dependency(lambda_x=0.05, lambda_y=0.5, normalization=MNIST_HALF),
                     losses.cross_entropy)}
    out, optimizer = {}, optax.adam(2e-3)  # one optimiser object: fit's compiled programs are reused
    for name, (model, defense, task) in runs.items():
        state = fit(model, x, y, optimizer=optimizer, epochs=6, batch_size=64, key=jax.random.key(0),
                    defense=defense, task_loss=task, progress=False, steps_per_dispatch=1)  # one program to compile
        defense = defense or defenses.identity()
        oracle = BlackBox.from_model(model, state.variables, defense=defense, defense_state=state.defense_state)
        trained = train_decoder_attack(decoder_for(model.feature_shape(), model.input_shape, width=16), oracle, x,
                                       config=DecoderAttackConfig(epochs=4, batch_size=64), key=jax.random.key(200),
                                       progress=False)
        x_hat = decoder_attack(trained, oracle.query(xt, key=jax.random.key(9)))
        out[name] = (float(metrics.mse(x_hat, xt).mean()),
                     float(evaluate(model, state.variables, xt, yt, defense=defense, defense_state=state.defense_state,
                                    key=jax.random.key(6))))
    out["mean image"] = float(metrics.mse(np.broadcast_to(x.mean(0), xt.shape), xt).mean())
    return out


def test_the_decoder_attack_beats_the_mean_image_on_the_unprotected_cnn(outcomes):
    assert outcomes["unprotected"][0] < 0.5 * outcomes["mean image"], outcomes


# measured (12-02, one seed): decoder MSE / accuracy: unprotected 0.0138 / 0.989; SiftFunnel 0.0953 / 0.681
# (6.9x the MSE; the 6-epoch run overstates the accuracy cost of its objective); MID (beta 1e-4) 0.0210 /
# 0.958 (1.52x); BiDO (0.05, 0.5) 0.0164 / 0.981 (1.19x, the thinnest margin). MID at beta 1e-3 and BiDO on
# the sigmoid digits_cnn collapsed accuracy to chance in earlier runs. The fixture took 251 s on the shared
# machine (with a background run), 295 s with steps_per_dispatch=1 (passing; load average 11): over the
# CI budget, dominated by compiling four train steps (the funnel step alone about 85 s under that load);
# 172 s on a lighter machine (load average 1-4, 12-02 02:55).
MARGINS = {"siftfunnel": (3.0, 0.5), "mid": (1.3, 0.9), "bido": (1.1, 0.9)}  # (MSE factor, accuracy floor)


@pytest.mark.parametrize("defense", list(MARGINS))
def test_defense_makes_the_decoder_attack_worse_at_a_measured_accuracy_cost(outcomes, defense):
    mse, accuracy = outcomes[defense]
    clean_mse, clean_accuracy = outcomes["unprotected"]
    factor, floor = MARGINS[defense]
    assert mse > factor * clean_mse, outcomes
    assert floor < accuracy < clean_accuracy, outcomes
