import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mijax import data, defenses, losses, stacks
from mijax.models import digits_cnn
from mijax.optim import freeze
from mijax.train import evaluate, fit


@pytest.fixture(scope="module")
def digits():
    train = data.load("digits", "train")
    test = data.load("digits", "test")
    resize = lambda x: np.clip(np.asarray(data.resize(x, (16, 16))), 0, 1)
    return resize(train.images), train.labels, resize(test.images), test.labels


MODEL = digits_cnn(image_size=16)
ADAM = optax.adam(2e-3)   # one object: fits with the same settings share one compiled step


def _fit(digits, **kw):
    x, y, _, _ = digits
    settings = dict(optimizer=ADAM, epochs=2, batch_size=64, key=jax.random.key(0), progress=False)
    return fit(MODEL, x[:512], y[:512], **{**settings, **kw})


def test_learns_digits(digits):
    x, y, test_x, test_y = digits
    model = digits_cnn(image_size=16)
    state = fit(model, x, y, optimizer=optax.adam(2e-3), epochs=8, batch_size=64, key=jax.random.key(0),
                progress=False)
    assert evaluate(model, state.variables, test_x, test_y, key=jax.random.key(1)) > 0.85


def test_kill_and_resume_gives_the_uninterrupted_result(digits, tmp_path):
    noise = defenses.gaussian_noise(sigma=0.2)
    uninterrupted = _fit(digits, defense=noise)

    class Killed(Exception):
        pass

    def kill_after_checkpoint(step, state):
        if step == 12:  # before step 12's checkpoint: the run resumes from step 8 (epoch end)
            raise Killed

    with pytest.raises(Killed):
        _fit(digits, defense=noise, workdir=tmp_path, checkpoint_every=4, callback=kill_after_checkpoint)
    resumed = _fit(digits, defense=noise, workdir=tmp_path, checkpoint_every=4)
    assert int(resumed.step) == int(uninterrupted.step) == 16
    chex.assert_trees_all_close(resumed.variables, uninterrupted.variables, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(resumed.opt_state, uninterrupted.opt_state, rtol=1e-6, atol=1e-7)


def test_steps_per_dispatch_do_not_change_the_result(digits):
    # 8 steps per epoch: 3 steps per dispatch leaves remainders at every epoch end
    runs = [_fit(digits, defense=defenses.gaussian_noise(sigma=0.2), steps_per_dispatch=k) for k in (1, 3, 16)]
    for run in runs[1:]:
        chex.assert_trees_all_equal(run.variables, runs[0].variables)
        chex.assert_trees_all_equal(run.opt_state, runs[0].opt_state)


def test_short_dispatches_run_the_same_program(digits):
    # 8 steps per epoch, 3 per dispatch, a checkpoint every 5: dispatches of 3, 2 and 1 steps
    traces = []
    noise = defenses.gaussian_noise(sigma=0.2)
    counting = defenses.Defense(init=noise.init,
                                feature_transform=lambda *a, **k: (traces.append(1), noise.feature_transform(*a, **k))[1])
    _fit(digits, defense=counting, steps_per_dispatch=3, checkpoint_every=5)
    assert len(traces) == 2  # one program: the metrics' shapes, then the loop body


def test_sigma_sweep_compiles_once_and_equals_a_python_loop(digits):
    sigmas = (0.0, 0.3, 1.0)
    defense = defenses.gaussian_noise(sigma=0.0)
    states = defenses.stack([defenses.gaussian_noise(sigma=s).init() for s in sigmas])
    traces = []
    counting = defenses.Defense(init=defense.init,
                                feature_transform=lambda *a, **k: (traces.append(1), defense.feature_transform(*a, **k))[1])
    # SGD, not Adam: Adam's normalisation would magnify float32 reduction-order differences.
    sgd = optax.sgd(0.05, momentum=0.9)
    swept = _fit(digits, defense=counting, defense_state=states, sweep=True, optimizer=sgd)
    # one program for all three σ (a pair and a tail on CPU), its step traced twice (the metrics'
    # shapes, then the loop)
    assert len(traces) <= 2 * (stacks.MAP_GROUP + 1)
    for i, sigma in enumerate(sigmas):
        single = _fit(digits, defense=defenses.gaussian_noise(sigma=sigma), optimizer=sgd)
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[i], swept.variables), single.variables,
                                    rtol=2e-4, atol=2e-5)


def test_bad_input(digits):
    x, y, _, _ = digits
    model = digits_cnn(image_size=16)
    kw = dict(optimizer=optax.adam(1e-3), epochs=1, batch_size=8, key=jax.random.key(0), progress=False)
    with pytest.raises(ValueError, match=r"expected labels of shape \[10\]"):
        fit(model, x[:10], y[:9], **kw)
    with pytest.raises(ValueError, match=r"expected x of shape \[batch, 16, 16, 1\]"):
        fit(model, x[:10, :8], y[:10], **kw)
    with pytest.raises(ValueError, match=r"expected images in \[0, 1\]"):
        fit(model, x[:10] * 255, y[:10], **kw)
    with pytest.raises(ValueError, match="expected batch_size"):
        fit(model, x[:10], y[:10], **{**kw, "batch_size": 11})


def _gain_defense(target=3.0):
    """z̃ = g·z with a trainable gain g and the term (g − target)²: a defense that owns a parameter."""
    return defenses.Defense(
        init=lambda key=None, spec=None: {"gain": defenses.Trainable(jnp.ones(())), "target": target},
        feature_transform=lambda state, z, key, *, train: state["gain"].params * z,
        loss=lambda state, inputs: (state["gain"].params - state["target"]) ** 2)


def test_defense_parameters_train_jointly_through_one_optimiser(digits):
    start = _fit(digits, epochs=1, optimizer=optax.sgd(0.0))
    state = _fit(digits, defense=_gain_defense(), optimizer=optax.sgd(0.05))
    gain = float(state.defense_state["gain"].params)
    assert 2.0 < gain < 3.5, gain                     # pulled from 1 towards 3 by its own term
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), state.variables["params"], start.variables["params"])
    assert all(jax.tree.leaves(changed))             # and the model trained in the same steps
    frozen = _fit(digits, defense=_gain_defense(), optimizer=freeze(optax.sgd(0.05), frozen=("defense",)))
    assert float(frozen.defense_state["gain"].params) == 1.0


def test_defense_init_gets_a_run_key_and_the_spec(digits):
    seen = {}

    def init(key=None, spec=None):
        seen["spec"] = spec
        return {"draw": jax.random.normal(key)}

    probe = defenses.Defense(init=init)
    a = _fit(digits, defense=probe, epochs=1).defense_state["draw"]
    b = _fit(digits, defense=probe, epochs=1, key=jax.random.key(1)).defense_state["draw"]
    assert float(a) != float(b)                      # derived from the run's root key
    spec = seen["spec"]
    assert (spec.input_shape, spec.feature_shape, spec.num_classes, spec.examples_per_epoch) == ((16, 16, 1), (8, 8, 8),
                                                                                                 10, 512)
    np.testing.assert_array_equal(spec.sample, digits[0][:64])   # the first batch of the run's images
    cem_state = _fit(digits, defense=defenses.cem(lam=1.0, sigma=0.1, num_components=2), epochs=1).defense_state
    assert cem_state["mixture"].means.shape == (10, 2, 512)
    assert float(cem_state["samples_per_class"]) == pytest.approx(51.2)


def test_staged_training_freezes_by_name_and_resumes_per_stage(digits, tmp_path):
    model = MODEL
    stage1 = _fit(digits, epochs=1)
    stage2_optimizer = freeze(ADAM, frozen=model.edge_names)
    stage2 = _fit(digits, variables=stage1.variables, optimizer=stage2_optimizer, workdir=tmp_path / "stage2")
    for name in model.network.names:
        if name not in stage1.variables["params"]:
            continue
        same = all(jax.tree.leaves(jax.tree.map(np.array_equal, stage1.variables["params"][name],
                                                stage2.variables["params"][name])))
        assert same == (name in model.edge_names), name
    steps = []
    again = _fit(digits, variables=stage1.variables, optimizer=stage2_optimizer, workdir=tmp_path / "stage2",
                 callback=lambda t, s: steps.append(t))
    assert steps == [] and int(again.step) == int(stage2.step)   # resumed from the stage's checkpoint
    chex.assert_trees_all_equal(again.variables, stage2.variables)


def test_task_loss_is_a_parameter(digits):
    plain = _fit(digits, epochs=1)
    smoothed = _fit(digits, epochs=1, task_loss=losses.label_smoothing(epsilon=0.0))
    chex.assert_trees_all_close(plain.variables, smoothed.variables, atol=1e-4)  # Adam amplifies rounding
    strong = _fit(digits, epochs=1, task_loss=losses.label_smoothing(epsilon=0.5))
    assert not np.allclose(strong.variables["params"]["fc2"]["linear"]["kernel"], plain.variables["params"]["fc2"]["linear"]["kernel"])


def test_epoch_update_sees_the_training_images_augmented(digits):
    # CEM refits its mixture over the augmented training loader (cem.md §5): the epoch-end feature
    # pass gets the same augmentation as the steps (here: every image turned black)
    x, _, _, _ = digits
    probe = defenses.Defense(init=lambda key=None, spec=None: {"mean": jnp.zeros(())},
                             epoch_update=lambda state, feats, labels, key: {"mean": jnp.mean(feats)})
    black = lambda key, images: jnp.zeros_like(images)
    state = _fit(digits, defense=probe, epochs=1, augment=black)
    blank = MODEL.edge_apply(state.variables, jnp.zeros((1, *x.shape[1:])))[0]
    np.testing.assert_allclose(float(state.defense_state["mean"]), float(jnp.mean(blank)), rtol=1e-5)
    plain = _fit(digits, defense=probe, epochs=1)
    assert abs(float(plain.defense_state["mean"]) - float(jnp.mean(blank))) > 1e-3
