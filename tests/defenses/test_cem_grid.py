"""The σ×λ grid of noise + CEM trains as one vmapped program that traces once (cem.md §14)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mijax import defenses, stacks
from mijax.defenses.base import Defense, chain
from mijax.models import vgg11_bn_sgm
from mijax.train import fit

SIGMAS, LAMS = (0.01, 0.025, 0.05, 0.1, 0.15), (0.0, 8.0, 16.0)


def _setup(num_images=64):
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(num_images, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 10, size=num_images).astype(np.int32)
    model = vgg11_bn_sgm(width_multiplier=1 / 16)
    traces = []
    counter = Defense(loss=lambda state, inputs: traces.append(1) or jnp.zeros(()))

    def defense_for(sigma, lam):
        cem = defenses.cem_with_noise(lam=lam, sigma=sigma, num_classes=10, feature_dim=512,
                                      samples_per_class=num_images / 10)
        return chain(cem, counter)

    return model, images, labels, defense_for, traces


def _fit(model, images, labels, defense, state, sweep):
    # two epochs: the second one has the CEM term (mixture fitted after epoch 1)
    return fit(model, images, labels, optimizer=optax.sgd(0.01, momentum=0.9), epochs=2, batch_size=32,
               key=jax.random.key(3), defense=defense, defense_state=state, sweep=sweep, progress=False)


def test_grid_of_15_traces_once_and_equals_single_runs():
    model, images, labels, defense_for, traces = _setup()
    configs = [(s, lam) for s in SIGMAS for lam in LAMS]
    defense = defense_for(*configs[0])
    states = defenses.stack([defense_for(s, lam).init() for s, lam in configs])
    grid = _fit(model, images, labels, defense, states, sweep=True)
    # one compiled program: on CPU a `lax.map` over unrolled pairs traces the step for a pair and
    # for the odd one out, not once per configuration; `fit_loop` traces it twice (the metrics'
    # shapes, then the loop)
    assert len(traces) <= 2 * (stacks.MAP_GROUP + 1), f"the 15-configuration grid traced {len(traces)} times"
    # the CEM term acted in epoch 2 for λ > 0 and changed the encoder
    assert float(grid.defense_state[0][1]["fitted"][1]) == 1.0
    edge = lambda m: np.concatenate([np.ravel(a[m]) for a in jax.tree.leaves(grid.variables["params"]["bottleneck"])])
    assert not np.allclose(edge(0), edge(1))

    for m in (0, 1):  # the first configuration (λ = 0) and one with CEM (σ = 0.01, λ = 8)
        single = _fit(model, images, labels, defense_for(*configs[m]), defense_for(*configs[m]).init(), sweep=False)
        for a, b in zip(jax.tree.leaves(single.variables), jax.tree.leaves(grid.variables)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b[m]), rtol=1e-3, atol=1e-5)
