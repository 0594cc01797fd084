"""Training split models with defenses: a jit-compiled step, a fit loop with checkpoints, evaluation.

The step minimises the task loss plus the defense's terms over one forward pass of the pipeline
(`mijax.pipeline`: input transform, edge, feature transform, cloud, client tail),

    L = mean_i task(h(g(T(f(x_i)))), y_i) + mean_i defense.loss(...)_i,

with respect to the model's parameters and the defense's `Trainable` parameters, through one
optimiser (`TrainState.opt_state` over `{"model": ..., "defense": ...}`). `fit` runs one model, or
with `sweep=True` a stack of models that differ in their defense settings (σ, λ, ...) as one program
that compiles once. Every state and batch is a pytree, so a device mesh shards them in one place.
"""

from __future__ import annotations

import functools
import json
import pathlib
import zlib
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from tqdm.auto import tqdm

from mijax import checks, losses
from mijax import mesh as meshes
from mijax.checkpoint import Checkpointer
from mijax.defenses.base import Defense, LossInputs, identity, trainable_part, with_trainable
from mijax.nn import Variables
from mijax.pipeline import cloud_side, run, transmit
from mijax.split import SplitModel
from mijax.stacks import map_models
from mijax.steps import descend


class TrainState(NamedTuple):
    """Everything a training run carries from step to step (a leading axis per model in sweeps).

    `opt_state` is the optimiser's state over `train_params(state)`: `{"model": variables["params"],
    "defense": the defense state's Trainable parts}`.
    """

    step: jax.Array
    variables: Variables
    opt_state: optax.OptState
    defense_state: Any


def train_params(variables: Variables, defense_state: Any) -> dict:
    """The parameter tree the optimiser updates: the model's and the defense's trainable ones."""
    return {"model": variables["params"], "defense": trainable_part(defense_state)}


def init_train_state(model: SplitModel, optimizer: optax.GradientTransformation, key: jax.Array,
                     defense_state: Any = (), *, variables: Variables | None = None) -> TrainState:
    """Step 0: `variables` (default `model.init(key)`) and the optimiser state over them."""
    variables = model.init(key) if variables is None else variables
    return TrainState(jnp.zeros((), jnp.int32), variables, optimizer.init(train_params(variables, defense_state)),
                      defense_state)


def _reused(fn: Callable) -> Callable:
    """`fn` memoised on its (hashable) arguments: repeated `fit` calls with the same model, optimiser
    and defense get the same step function, hence the same compiled program (no recompilation)."""
    cached = functools.lru_cache(maxsize=16)(fn)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return cached(*args, **kwargs)
        except TypeError:  # an unhashable argument: build it afresh
            return fn(*args, **kwargs)

    return call


@_reused
def make_train_step(model: SplitModel, optimizer: optax.GradientTransformation,
                    defense: Defense | None = None, *,
                    augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
                    task_loss: losses.TaskLoss = losses.cross_entropy):
    """Builds `step(state, images, labels, key) -> (state, metrics)` (pure; jit or vmap it).

    `key` is the step's own key (`fit_loop` folds the step number in).

    Args:
        model: the split model.
        optimizer: an optax transformation over `train_params` (`mijax.optim.freeze` for stages).
        defense: its input/feature transforms and loss terms apply during training; its `taps`
            are recorded in the same forward pass.
        augment: `augment(key, images) -> images`, e.g. random flips and crops.
        task_loss: per-example `task_loss(logits, labels, step)` (`mijax.losses`).
    """
    defense = defense or identity()

    def step(state: TrainState, images, labels, key):
        augment_key, transmit_key, cloud_key, update_key = jax.random.split(key, 4)
        if augment is not None:
            images = augment(augment_key, images)

        def loss_fn(params):
            variables = {**state.variables, "params": params["model"]}
            defense_state = with_trainable(state.defense_state, params["defense"])
            edge = transmit(model, variables, images, defense=defense, defense_state=defense_state,
                            key=transmit_key, train=True, taps=defense.taps)
            out = cloud_side(model, edge, key=cloud_key, train=True, taps=defense.taps)
            task = task_loss(out.logits, labels, state.step)
            inputs = LossInputs(out.images, labels, out.z, out.z_tilde, out.logits, out.taps)
            extra = jnp.zeros(()) if defense.loss is None else jnp.mean(defense.loss(defense_state, inputs))
            loss = jnp.mean(task) + extra
            return loss, (out.variables, inputs, jnp.mean(task), extra)

        params, opt_state, loss, (variables, inputs, task, extra) = descend(
            loss_fn, optimizer, train_params(state.variables, state.defense_state), state.opt_state)
        variables = {**variables, "params": params["model"]}
        defense_state = with_trainable(state.defense_state, params["defense"])
        if defense.update is not None:
            defense_state = defense.update(defense_state, jax.lax.stop_gradient(inputs), update_key)
        accuracy = jnp.mean(jnp.argmax(inputs.logits, -1) == labels)
        metrics = {"loss": loss, "task_loss": task, "defense_loss": extra, "accuracy": accuracy}
        return TrainState(state.step + 1, variables, opt_state, defense_state), metrics

    return step


def predict(model: SplitModel, variables: Variables, images, *, defense: Defense | None = None,
            defense_state: Any = None, key: jax.Array, batch_size: int = 256,
            sweep: bool | str = False, mesh: Mesh | None = None) -> np.ndarray:
    """Logits `h(g(T(f(x))))` in eval mode for all `images` ([num_models, N, classes] if `sweep`).

    The defense is active as deployed: fresh noise per batch from `key` (`mijax.pipeline.run`).

    Args:
        defense_state: the defense's state; defaults to `defense.init(key, model.defense_spec())`
            (not for sweeps).
        sweep: False; True (or "all") when `variables` and `defense_state` carry a leading model
            axis; "defense" when only `defense_state` does (one model, many defense settings).
        mesh: split each batch over the mesh's `data` axis (`mijax.mesh`).
    """
    defense = defense or identity()
    if defense_state is None:
        if sweep:
            raise ValueError("expected a stacked defense_state with sweep (see mijax.defenses.stack), got None")
        defense_state = defense.init(key, model.defense_spec())
    images = np.asarray(images)
    model.check_images(images)
    checks.nonempty("images", images.shape)
    checks.unit_interval("images", images)
    if batch_size < 1:
        raise ValueError(f"expected batch_size >= 1, got {batch_size}")

    def logits_fn(variables, defense_state, x, key):
        return run(model, variables, x, defense=defense, defense_state=defense_state, key=key).logits

    if sweep not in (False, True, "all", "defense"):
        raise ValueError(f"expected sweep in (False, True, 'all', 'defense'), got {sweep!r}")
    if sweep:
        logits_fn = map_models(logits_fn, (None if sweep == "defense" else 0, 0, None, None),
                               stacked_weights=sweep != "defense")
    logits_fn = jax.jit(logits_fn)
    outputs = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        size = len(chunk)
        if size < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - size, 0)])
        out = np.asarray(logits_fn(variables, defense_state, meshes.put_batch(chunk, mesh),
                                   meshes.put_batch(jax.random.fold_in(key, start), mesh)))
        outputs.append(out[..., :size, :])
    return np.concatenate(outputs, axis=-2)


def evaluate(model: SplitModel, variables: Variables, images, labels, *, defense: Defense | None = None,
             defense_state: Any = None, key: jax.Array, batch_size: int = 256,
             sweep: bool | str = False, mesh: Mesh | None = None) -> np.ndarray:
    """Top-1 accuracy of the deployed pipeline (a scalar, or `[num_models]` if `sweep`; see `predict`)."""
    labels = np.asarray(labels)
    if labels.shape != (len(images),):
        raise ValueError(f"expected labels of shape [{len(images)}] matching images, got {labels.shape}")
    checks.class_labels("labels", labels, model.num_classes)
    logits = predict(model, variables, images, defense=defense, defense_state=defense_state, key=key,
                     batch_size=batch_size, sweep=sweep, mesh=mesh)
    return np.mean(np.argmax(logits, -1) == np.asarray(labels), axis=-1)


def features(model: SplitModel, variables: Variables, images, *, batch_size: int = 256,
             sweep: bool = False, mesh: Mesh | None = None) -> np.ndarray:
    """Clean eval-mode edge features `f(x)` for all `images` ([num_models, N, ...] if `sweep`);
    with `mesh`, each batch split over its `data` axis."""
    fn = _edge_program(model, sweep)
    images = np.asarray(images)
    axis = 1 if sweep else 0
    return np.concatenate([np.asarray(fn(variables, meshes.put_batch(images[s:s + batch_size], mesh)))
                           for s in range(0, len(images), batch_size)], axis=axis)


def fit_loop(step: Callable, state: Any, arrays: tuple[np.ndarray, ...], *, epochs: int,
             batch_size: int, key: jax.Array, step_args: tuple = (),
             workdir: str | pathlib.Path | None = None, checkpoint_every: int | None = None,
             epoch_end: Callable[[Any, int], Any] | None = None,
             callback: Callable[[int, Any], None] | None = None, steps_per_dispatch: int = 16,
             progress: bool = True, description: str = "train", mesh: Mesh | None = None,
             stacked: bool = False) -> Any:
    """The generic training loop: batches, per-step keys, progress bar, checkpoints and resume.

    Batches are drawn without replacement from a permutation per epoch derived from `key`, and step
    `t` gets the key `fold_in(key, t)`, so a run that resumes from a checkpoint ends exactly where an
    uninterrupted run ends. The data are copied to the device once; each dispatch runs up to
    `steps_per_dispatch` steps as one compiled loop that gathers its own batches on the device, so the
    host only sends indices. The order and keys do not depend on `steps_per_dispatch`, and neither do
    the results (tested bit for bit). Used by `fit` and by the learned attacks.

    Args:
        step: pure `step(state, *batch, key, *step_args) -> (state, metrics)` (jitted here).
        state: the initial state (replaced by the latest checkpoint in `workdir` if there is one).
        arrays: host arrays with a common leading axis, batched together.
        epochs: passes over the data (the last partial batch of each epoch is dropped).
        batch_size: examples per step.
        key: PRNG key for the data order and the steps.
        step_args: arrays passed to every step unchanged (weights an attack reads, say): arguments
            of the compiled program, not constants folded into it.
        workdir: checkpoints go to `workdir/checkpoints`; None disables checkpointing. A rerun resumes
            only a run of the same data, batch size, key and state shapes (`workdir/run.json`); more
            epochs continue it.
        checkpoint_every: steps between checkpoints (default: once per epoch).
        epoch_end: `epoch_end(state, epoch) -> state` after each epoch (before its checkpoint).
        callback: `callback(step, state)` after every dispatch; epoch ends and checkpoints always
            end a dispatch, so `step` meets each of them.
        steps_per_dispatch: steps per compiled call (1 dispatches every step).
        progress: show a progress bar.
        description: the progress bar's label.
        mesh: run on this device mesh (`mijax.mesh`): each batch split over its `data` axis, the
            state replicated, or with `stacked` its leading model axis split over `model`. The data
            and `step_args` are replicated. Checkpoints restore onto the current mesh.
        stacked: the state carries a leading model axis (a sweep).

    Returns:
        The final state.
    """
    num = len(arrays[0])
    if not 0 < batch_size <= num:
        raise ValueError(f"expected batch_size in [1, {num}], got {batch_size}")
    if steps_per_dispatch < 1:
        raise ValueError(f"expected steps_per_dispatch >= 1, got {steps_per_dispatch}")
    order_key, step_key = jax.random.split(key)
    steps_per_epoch = num // batch_size
    total = epochs * steps_per_epoch
    checkpoint_every = checkpoint_every or steps_per_epoch
    checkpointer = None
    if workdir:
        _check_same_run(pathlib.Path(workdir), state, arrays, batch_size=batch_size, key=key)
        checkpointer = Checkpointer(pathlib.Path(workdir) / "checkpoints")
    if mesh is not None:
        if batch_size % mesh.shape["data"]:
            raise ValueError(f"expected batch_size divisible by the mesh's data axis ({mesh.shape['data']}), "
                             f"got {batch_size}")
        models = {np.shape(leaf)[0] for leaf in jax.tree.leaves(state) if np.ndim(leaf)} if stacked else set()
        if stacked and (len(models) != 1 or models.pop() % mesh.shape["model"]):
            raise ValueError(f"expected a stacked state whose number of models divides evenly over the mesh's "
                             f"model axis ({mesh.shape['model']})")
        state = meshes.shard(state, mesh, meshes.stacked_sharding(mesh)) if stacked else meshes.replicate(state, mesh)
        step_args = meshes.replicate(step_args, mesh)
        device_arrays = meshes.replicate(tuple(np.asarray(a) for a in arrays), mesh)
    else:
        device_arrays = tuple(jnp.asarray(a) for a in arrays)
    start = 0
    if checkpointer and checkpointer.latest_step() is not None:
        start = checkpointer.latest_step()
        state = checkpointer.restore(state)  # onto the shardings of `state`: the current mesh
    run = scan_steps(step, mesh=mesh)
    dispatch = min(steps_per_dispatch, steps_per_epoch)
    place = (lambda x: x) if mesh is None else (lambda x: meshes.replicate(x, mesh))
    step_key = place(step_key)
    bar = tqdm(total=total, initial=start, desc=description, disable=not progress, leave=False)
    try:
        order_epoch, order, t = None, None, start
        while t < total:
            epoch, index = divmod(t, steps_per_epoch)
            if epoch != order_epoch:  # once per epoch: it syncs with the device
                order_epoch = epoch
                order = np.asarray(jax.random.permutation(jax.random.fold_in(order_key, epoch), num))
            next_checkpoint = (t // checkpoint_every + 1) * checkpoint_every
            count = min(dispatch, steps_per_epoch - index, next_checkpoint - t, total - t)
            rows = np.zeros((dispatch, batch_size), order.dtype)  # one shape for every dispatch
            rows[:count] = order[index * batch_size:(index + count) * batch_size].reshape(count, batch_size)
            state, metrics = run(state, device_arrays, place(rows), step_key, place(np.int32(t)), step_args,
                                 place(np.int32(count)))
            t += count
            if epoch_end is not None and index + count == steps_per_epoch:
                state = epoch_end(state, epoch)
            if callback is not None:
                callback(t, state)
            if checkpointer and (t % checkpoint_every == 0 or t == total):
                checkpointer.save(t, state)
            bar.update(count)
            if progress:  # reading the metrics waits for the device: only for a bar that shows them
                bar.set_postfix({k: _dispatch_mean(np.asarray(v)[:count]) for k, v in metrics.items()})
    finally:
        bar.close()
        if checkpointer:
            checkpointer.close()
    return state


def _dispatch_mean(values) -> str:
    """A metric's mean over the steps of one dispatch; NaN entries (steps that do not compute it,
    such as a GAN's critic-only steps) are left out."""
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    return f"{finite.mean():.3f}" if finite.size else "nan"


def _check_same_run(workdir: pathlib.Path, state, arrays, *, batch_size: int, key: jax.Array) -> None:
    """Records what defines a run in `workdir/run.json`; raises if `workdir` holds a different run."""
    def digest(a):  # a strided sample of the bytes: cheap on 50,000 images, still tells datasets apart
        a = np.ascontiguousarray(a[::max(1, len(a) // 1024)])
        return f"{a.shape}:{a.dtype}:{zlib.crc32(a.tobytes()):08x}"

    run = {"batch_size": batch_size, "examples": len(arrays[0]),
           "data": [digest(np.asarray(a)) for a in arrays],
           "key": np.asarray(jax.random.key_data(key)).tolist(),
           "state": [f"{tuple(np.shape(leaf))}:{jnp.result_type(leaf)}" for leaf in jax.tree.leaves(state)]}
    path = workdir / "run.json"
    if path.exists():
        saved = json.loads(path.read_text())
        differing = [name for name in run if saved.get(name) != run[name]]
        if differing:
            raise ValueError(f"expected workdir {str(workdir)!r} to hold a run of the same settings, but its "
                             f"{', '.join(differing)} differ; pass another workdir or delete this one")
        return
    workdir.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"run.json.{jax.process_index()}")  # processes of one run write the same
    partial.write_text(json.dumps(run))
    partial.replace(path)


@_reused
def scan_steps(step: Callable, *, mesh: Mesh | None = None) -> Callable:
    """`run(state, arrays, rows [dispatch, batch], key, first_step, step_args, count=None)`: the steps
    of the first `count` rows (all of them by default) in one compiled loop; returns the state and
    the metrics stacked over `dispatch` (NaN, or 0 for integer metrics, after `count`).

    A traced `count` lets one program run full and short dispatches (an epoch's last, one before a
    checkpoint), where a scan over `count` rows compiles once per length (9.5–14 s a program in the
    cem smoke preset). The step is traced twice, for its metrics' shapes and for the loop. With `mesh`,
    each gathered batch is split over the mesh's `data` axis."""

    def run(state, arrays, rows, key, first_step, step_args, count=None):
        def one(i, state):
            batch = meshes.constrain_batch(tuple(a[rows[i]] for a in arrays), mesh)
            return step(state, *batch, jax.random.fold_in(key, first_step + i), *step_args)

        def body(i, carry):
            state, stacked = carry
            state, metrics = one(i, state)
            return state, jax.tree.map(lambda s, m: s.at[i].set(m), stacked, metrics)

        def unset(m):
            fill = jnp.nan if jnp.issubdtype(m.dtype, jnp.inexact) else 0
            return jnp.full((rows.shape[0], *m.shape), fill, m.dtype)

        stacked = jax.tree.map(unset, jax.eval_shape(lambda s: one(0, s)[1], state))
        return jax.lax.fori_loop(0, rows.shape[0] if count is None else count, body, (state, stacked))

    return jax.jit(run, donate_argnums=0)


def fit(model: SplitModel, images, labels, *, optimizer: optax.GradientTransformation, epochs: int,
        batch_size: int, key: jax.Array, defense: Defense | None = None, defense_state: Any = None,
        sweep: bool = False, augment: Callable | None = None, task_loss: losses.TaskLoss = losses.cross_entropy,
        variables: Variables | None = None, mesh: Mesh | None = None, workdir: str | pathlib.Path | None = None,
        checkpoint_every: int | None = None, callback: Callable[[int, TrainState], None] | None = None,
        steps_per_dispatch: int = 16, progress: bool = True, description: str = "train") -> TrainState:
    """Trains a split model with a defense; checkpoints to `workdir` and resumes from it on rerun.

    Args:
        model: the split model.
        images: `[N, height, width, channels]` in [0,1].
        labels: `[N]` integer labels.
        optimizer: optax transformation over the parameters.
        epochs: passes over the data (the last partial batch of each epoch is dropped).
        batch_size: examples per step.
        key: root PRNG key (initialisation, order, augmentation, defense noise).
        defense: the training-time defense (default none).
        defense_state: its state; with `sweep=True` a stacked state with a leading model axis
            (see `mijax.defenses.stack`). Defaults to `defense.init(k, spec)` with a key derived
            from `key` and `model.defense_spec(examples_per_epoch=...)`.
        sweep: train one model per entry of the stacked `defense_state`, as one program, all from
            the same initialisation and data order.
        augment: `augment(key, images) -> images` applied inside the step, and to the images the
            defense's `epoch_update` sees (CEM refits its mixture on the augmented training data).
        task_loss: the per-example task loss (`mijax.losses`; cross-entropy by default).
        variables: start from these (a previous stage's, with a leading model axis for a sweep)
            instead of `model.init`; with `mijax.optim.freeze` this is staged training, one
            `workdir` per stage.
        mesh: train on this device mesh (`mijax.mesh.make_mesh`): batches split over `data`; a
            sweep's models split over `model` (their number must divide evenly). Batch-level terms
            (BatchNorm statistics, CEM's segment sums, dCor) are computed over the global batch.
        workdir, checkpoint_every, callback, steps_per_dispatch, progress, description: see
            `fit_loop`.

    Returns:
        The final `TrainState`.

    Raises:
        ValueError: on mismatched or badly shaped images and labels, or a batch larger than the data.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    model.check_images(images)
    if labels.shape != (images.shape[0],):
        raise ValueError(f"expected labels of shape [{images.shape[0]}] matching images, got {labels.shape}")
    checks.unit_interval("images", images)
    checks.class_labels("labels", labels, model.num_classes)
    if epochs < 1:
        raise ValueError(f"expected epochs >= 1, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"expected batch_size >= 1, got {batch_size}")
    defense = defense or identity()
    init_key, loop_key, epoch_key = jax.random.split(key, 3)
    if defense_state is None:
        if sweep:
            raise ValueError("expected a stacked defense_state with sweep (see mijax.defenses.stack), got None")
        spec = model.defense_spec(examples_per_epoch=len(images) // batch_size * batch_size,
                                  sample=images[:batch_size])
        defense_state = defense.init(jax.random.fold_in(init_key, 1), spec)

    init = _init_program(model, optimizer, sweep, variables is not None)
    step = make_train_step(model, optimizer, defense, augment=augment, task_loss=task_loss)
    if sweep:
        # models split over a mesh's model axis run side by side (vmap), not one after another
        mode = "vmap" if mesh is not None and mesh.shape["model"] > 1 else None
        step = _sweep_step(step, (0, None, None, None), mode=mode)
    epoch_end = None
    if defense.epoch_update is not None:
        def epoch_end(state, epoch):
            epoch_images = images
            if augment is not None:  # the refit sees the training data as the steps do (cem.md §5)
                epoch_images = _augmented(augment, images, jax.random.fold_in(jax.random.fold_in(epoch_key, epoch), 1))
            return _epoch_update(model, defense, state, epoch_images, labels,
                                 jax.random.fold_in(epoch_key, epoch), sweep, mesh)
    return fit_loop(step, init(init_key, defense_state, variables), (images, labels),
                    epochs=epochs, batch_size=batch_size, key=loop_key, workdir=workdir,
                    checkpoint_every=checkpoint_every, epoch_end=epoch_end, callback=callback,
                    steps_per_dispatch=steps_per_dispatch, progress=progress, description=description,
                    mesh=mesh, stacked=sweep)


_sweep_step = _reused(map_models)


@_reused
def _init_program(model: SplitModel, optimizer, sweep: bool, stacked_variables: bool) -> Callable:
    """`init(key, defense_state, variables) -> TrainState`, compiled once per model and optimiser."""
    def init(key, defense_state, variables):
        return init_train_state(model, optimizer, key, defense_state, variables=variables)
    return jax.jit(jax.vmap(init, (None, 0, 0 if stacked_variables else None)) if sweep else init)


def _augmented(augment: Callable, images: np.ndarray, key: jax.Array, chunk: int = 1024) -> np.ndarray:
    """`augment` over all images, a chunk (with its own key) at a time."""
    fn = _jitted(augment)
    return np.concatenate([np.asarray(fn(jax.random.fold_in(key, s), images[s:s + chunk]))
                           for s in range(0, len(images), chunk)])


_jitted = functools.lru_cache(maxsize=None)(jax.jit)


def _epoch_update(model, defense, state, images, labels, key, sweep, mesh=None):
    feats = features(model, state.variables, images, sweep=sweep, mesh=mesh)
    update = _epoch_update_program(defense.epoch_update, sweep)
    put = lambda x: meshes.put_batch(x, mesh, split=False)
    return state._replace(defense_state=update(state.defense_state, put(feats), put(labels), put(key)))


# Compiled once per model / defense: `fit` calls them after every epoch.
@functools.lru_cache(maxsize=None)
def _edge_program(model: SplitModel, sweep: bool) -> Callable:
    fn = lambda v, x: model.edge_apply(v, x)[0]
    return jax.jit(map_models(fn, (0, None)) if sweep else fn)


@functools.lru_cache(maxsize=None)
def _epoch_update_program(epoch_update: Callable, sweep: bool) -> Callable:
    return jax.jit(jax.vmap(epoch_update, in_axes=(0, 0, None, None)) if sweep else epoch_update)
