"""One process of tests/test_mesh.py's multi-host run: 4 fake CPU devices per process, JAX's gloo
collectives over the loopback address, a mesh over both processes' devices."""

import json
import os
import sys

os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from mijax import defenses  # noqa: E402
from mijax import mesh as meshes  # noqa: E402
from mijax.train import fit  # noqa: E402

from tests.mesh_common import MODEL, digits  # noqa: E402


def main(workdir, out, kill_at):
    if meshes.initialize():
        assert jax.process_count() == 2 and jax.device_count() == 8, (jax.process_count(), jax.device_count())
    mesh = meshes.make_mesh("data:4,model:2") if jax.device_count() == 8 else None
    x, y = digits(128)
    settings = dict(optimizer=optax.adam(2e-3), batch_size=32, key=jax.random.key(0), progress=False)

    seen = []

    def maybe_die(step, state):
        seen.append(step)
        if step == kill_at and jax.process_index() == 1:
            os._exit(3)   # killed mid-run

    single = fit(MODEL, x, y, epochs=2, mesh=mesh, defense=defenses.gaussian_noise(sigma=0.1),
                 workdir=os.path.join(workdir, "fit"), checkpoint_every=2, callback=maybe_die, **settings)
    states = defenses.stack([defenses.gaussian_noise(sigma=s).init() for s in (0.0, 0.2)])
    grid = fit(MODEL, x, y, epochs=1, mesh=mesh, defense=defenses.gaussian_noise(sigma=0.0), defense_state=states,
               sweep=True, **settings)
    if jax.process_index() == 0:
        leaves = {f"fit{i}": np.asarray(a) for i, a in enumerate(jax.tree.leaves(jax.device_get(single.variables)))}
        leaves.update({f"grid{i}": np.asarray(a) for i, a in enumerate(jax.tree.leaves(jax.device_get(grid.variables)))})
        np.savez(out, **leaves)
        print(json.dumps({"processes": jax.process_count(), "devices": jax.device_count(), "first_step": seen[0]}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
