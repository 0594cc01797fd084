"""Run by tests/test_mesh.py in a subprocess with 8 fake CPU devices (XLA_FLAGS must precede jax)."""

import json
import os
import sys

os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"

import chex  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from mijax import defenses  # noqa: E402
from mijax import mesh as meshes  # noqa: E402
from mijax.attacks import RMLEConfig, WhiteBox, rmle  # noqa: E402
from mijax.train import evaluate, fit  # noqa: E402

from tests.mesh_common import MODEL, digits  # noqa: E402


def close(a, b, **tolerance):
    # a sharded batch sums its gradients in another order: after training, single weights were seen
    # to differ by 1.6e-5 (1 of 262,144 fc1 weights of magnitude 0.03, CI 12-02), so atol 3e-5
    chex.assert_trees_all_close(jax.device_get(a), jax.device_get(b), **(tolerance or {"rtol": 1e-4, "atol": 3e-5}))
    return True


def main(workdir):
    x, y = digits()
    noise = defenses.gaussian_noise(sigma=0.1)
    settings = dict(optimizer=optax.adam(2e-3), batch_size=32, key=jax.random.key(0), progress=False, defense=noise)
    mesh8, mesh42 = meshes.make_mesh("data:8"), meshes.make_mesh("data:4,model:2")
    out = {"devices": jax.device_count()}

    single = fit(MODEL, x, y, epochs=2, **settings)
    sharded = fit(MODEL, x, y, epochs=2, mesh=mesh8, **settings)
    out["fit_sharded_like_param"] = str(jax.tree.leaves(sharded.variables)[0].sharding.spec)
    out["fit_equal"] = close(single.variables, sharded.variables)
    out["evaluate_equal"] = float(evaluate(MODEL, single.variables, x, y, key=jax.random.key(1))) == float(
        evaluate(MODEL, sharded.variables, x, y, key=jax.random.key(1), mesh=mesh8))

    # the σ grid as one program: models over `model`, batches over `data`
    states = defenses.stack([defenses.gaussian_noise(sigma=s).init() for s in (0.0, 0.1, 0.2, 0.4)])
    grid = dict(settings, defense_state=states, sweep=True, epochs=1)
    unsharded = fit(MODEL, x, y, **grid)
    on_mesh = fit(MODEL, x, y, **grid, mesh=mesh42)
    out["grid_param_spec"] = str(jax.tree.leaves(on_mesh.variables)[0].sharding.spec)
    out["grid_equal"] = close(unsharded.variables, on_mesh.variables)

    # a white-box attack on images sharded over `data`
    z = MODEL.edge_apply(single.variables, jnp.asarray(x[:16]))[0]
    config = RMLEConfig(num_steps=50, learning_rate=0.05, tv_weight=0.05, optimizer="adam", space="pixel", eps=1e-8)
    attack = jax.jit(lambda k, z: rmle(k, z, config=config))
    knowledge = WhiteBox.from_model(MODEL, single.variables)
    x_hat = attack(knowledge, z)
    x_hat_mesh = attack(meshes.replicate(knowledge, mesh8), meshes.shard(z, mesh8))
    out["attack_sharded_spec"] = str(x_hat_mesh.sharding.spec)
    out["attack_equal"] = close(x_hat, x_hat_mesh)

    # checkpoints follow the mesh: saved on 8 devices, resumed on 1, and the other way
    for name, first, second in (("8_to_1", mesh8, None), ("1_to_8", None, mesh8)):
        path = os.path.join(workdir, name)
        fit(MODEL, x, y, epochs=1, mesh=first, workdir=path, **settings)
        resumed = fit(MODEL, x, y, epochs=2, mesh=second, workdir=path, **settings)
        out[f"resume_{name}"] = close(resumed.variables, single.variables)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
