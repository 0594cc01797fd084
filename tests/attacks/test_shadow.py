import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mijax import metrics
from mijax.attacks import (
    BlackBox,
    QueryFree,
    RMLEConfig,
    ShadowConfig,
    WhiteBox,
    he2019_shadow,
    shadow_attack,
    train_shadow,
)
from mijax.attacks.shadow import HE2019_SHADOWS
from mijax.models import cifar10cnn, lenet

from .test_inverse_network import trained_lenet


@pytest.fixture(scope="module")
def victim(data_dir):
    """LeNet cut at conv1, briefly trained on real MNIST; targets and the attacker's labelled data."""
    model, variables, test = trained_lenet(data_dir)
    targets = test.images[:10]
    z, _ = model.edge_apply(variables, targets)     # what the server receives
    return model, variables, targets, np.asarray(z), test.images[10:], test.labels[10:]


def _scores(x_hat, targets):
    return (float(np.mean(metrics.ssim(np.asarray(x_hat), targets))),
            float(np.mean(metrics.mse(np.asarray(x_hat), targets))))


def test_same_net_shadow_beats_the_mean_image(victim):
    model, variables, targets, z, aux, aux_labels = victim
    # λ_TV 0.5: the code's 2 is tuned for CIFAR-10; 4 shadow epochs on 1,000 images instead of 50 on 50,000
    config = ShadowConfig(epochs=4, inversion=RMLEConfig(num_steps=200, learning_rate=0.1, tv_weight=0.5))
    x_hat = shadow_attack(QueryFree.from_model(model, variables), z, config=config, key=jax.random.key(2),
                          shadow=lenet(cut="conv1"), images=aux, labels=aux_labels, progress=False)
    ssim, mse = _scores(x_hat, targets)
    base_ssim, base_mse = _scores(np.broadcast_to(aux.mean(0), targets.shape), targets)
    assert ssim > base_ssim + 0.3 and mse < 0.6 * base_mse, (ssim, mse, base_ssim, base_mse)


def test_never_reads_the_victims_edge_parameters(victim):
    model, variables, _, z, aux, aux_labels = victim
    edge = set(model.edge_names)
    poisoned = {group: {name: jax.tree.map(lambda a: jnp.full_like(a, jnp.nan), v) if name in edge else v
                        for name, v in tree.items()} for group, tree in variables.items()}
    absent = model.cloud_variables(variables)        # no edge entries at all: a read would fail
    assert not set(absent["params"]) & edge
    # a different architecture on normalised inputs ("diff net"), trained for a few steps
    shadow = he2019_shadow("conv1", "mnist")
    config = ShadowConfig(epochs=1, batch_size=64, inversion=RMLEConfig(num_steps=20, learning_rate=0.1))
    kw = dict(key=jax.random.key(3), images=aux[:256], labels=aux_labels[:256],
              normalization=model.normalization, progress=False)
    x_poisoned = shadow_attack(QueryFree.from_model(model, poisoned), z, config=config, shadow=shadow, **kw)
    trained = train_shadow(QueryFree.from_model(model, absent), shadow, config=config, **kw)
    assert trained.normalization == model.normalization
    x_absent = shadow_attack(trained, z, config=config)
    assert x_absent.shape == (10, 28, 28, 1) and np.all(np.isfinite(x_poisoned))
    np.testing.assert_allclose(x_poisoned, x_absent, rtol=1e-5, atol=1e-6)


def test_accepts_only_query_free_knowledge(victim):
    model, variables, _, z, aux, aux_labels = victim
    kw = dict(key=jax.random.key(0), shadow=lenet(cut="conv1"), images=aux, labels=aux_labels)
    for knowledge in (WhiteBox.from_model(model, variables), BlackBox.from_model(model, variables), model,
                      variables):
        with pytest.raises(TypeError, match="expected QueryFree knowledge"):
            shadow_attack(knowledge, z, **kw)
        with pytest.raises(TypeError, match="expected QueryFree knowledge"):
            train_shadow(knowledge, kw["shadow"], aux, aux_labels, key=kw["key"])


@pytest.mark.parametrize("dataset,cut", list(HE2019_SHADOWS))
def test_paper_shadows_produce_the_victims_feature_shape(dataset, cut):
    model = (cifar10cnn if dataset == "cifar10" else lenet)(cut=cut)
    shadow = he2019_shadow(cut, dataset)
    out = jax.eval_shape(lambda v, x: shadow.apply(v, x)[0], jax.eval_shape(shadow.init, jax.random.key(0)),
                         jax.ShapeDtypeStruct((1, *model.input_shape), jnp.float32))
    assert tuple(out.shape[1:]) == model.feature_shape()


def test_bad_input(victim):
    model, variables, _, z, aux, aux_labels = victim
    attacker = QueryFree.from_model(model, variables)
    with pytest.raises(ValueError, match=r"expected a shadow edge with features \(24, 24, 8\)"):
        train_shadow(attacker, he2019_shadow("relu2", "mnist"), aux, aux_labels, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"expected integer labels of shape \[1000\]"):
        train_shadow(attacker, lenet(cut="conv1"), aux, aux_labels[:10], key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"expected images of shape \[num, 28, 28, 1\]"):
        train_shadow(attacker, lenet(cut="conv1"), aux[:, :20], aux_labels, key=jax.random.key(0))
    with pytest.raises(ValueError, match="brings its own normalization"):
        train_shadow(attacker, lenet(cut="conv1"), aux, aux_labels, key=jax.random.key(0),
                     normalization=model.normalization)
    with pytest.raises(TypeError, match="expected the shadow edge as a mijax.nn.Pure or a SplitModel"):
        train_shadow(attacker, lambda x: x, aux, aux_labels, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"expected z_observed of shape \[batch, 24, 24, 8\]"):
        shadow_attack(attacker, z[..., :4], key=jax.random.key(0), shadow=lenet(cut="conv1"), images=aux,
                      labels=aux_labels)
    with pytest.raises(ValueError, match="needs shadow, images, labels and key"):
        shadow_attack(attacker, z, key=jax.random.key(0))
    with pytest.raises(ValueError, match="expected epochs >= 1"):
        train_shadow(attacker, lenet(cut="conv1"), aux, aux_labels, config=ShadowConfig(epochs=0),
                     key=jax.random.key(0))
    with pytest.raises(ValueError, match="no He et al. shadow"):
        he2019_shadow("fc1", "mnist")
