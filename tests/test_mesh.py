"""Scale-out on a device mesh, in subprocesses (fake CPU devices must be set before jax starts)."""

import dataclasses
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

import mijax_experiments as experiments
from mijax import mesh as meshes
from mijax_experiments import common
from tests.conftest import TEST_XLA_FLAGS

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _python(args, env=None, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    env["XLA_FLAGS"] = TEST_XLA_FLAGS  # the subprocess adds its device count
    return subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def _finish(process, timeout=300):
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-3000:]
    return out


def test_parse_and_make_mesh():
    assert meshes.parse_mesh("data:4,model:2") == {"data": 4, "model": 2}
    assert meshes.parse_mesh("model:2") == {"data": 1, "model": 2}
    mesh = meshes.make_mesh()                                  # all devices on the data axis
    assert dict(mesh.shape) == {"data": 1, "model": 1}
    for bad in ("data:0", "batch:2", "data:x"):
        with pytest.raises(ValueError, match="expected mesh"):
            meshes.parse_mesh(bad)
    with pytest.raises(ValueError, match="multiply to the 1 devices"):
        meshes.make_mesh("data:2")


def test_experiments_take_the_mesh_from_their_config(tmp_path):
    demo = experiments.get("demo")
    config = demo.get_config("tiny")
    assert common.mesh_for(config) is None                    # one device: no mesh at all
    assert dict(common.mesh_for(common.override(config, ["mesh=data:1"])).shape) == {"data": 1, "model": 1}
    (tmp_path / "config.json").write_text(json.dumps({"config": json.loads(json.dumps(dataclasses.asdict(config)))}))
    common.guard_workdir(tmp_path, common.override(config, ["mesh=data:1,model:1"]))   # resumes on any mesh
    with pytest.raises(ValueError, match="different config"):
        common.guard_workdir(tmp_path, common.override(config, ["epochs=3"]))


def test_sharded_fit_grid_attack_and_checkpoints_equal_the_unsharded_ones(tmp_path):
    out = _finish(_python([ROOT / "tests" / "mesh_checks.py", tmp_path]))
    result = json.loads(out.strip().splitlines()[-1])
    assert result == {"devices": 8, "fit_sharded_like_param": "P()", "fit_equal": True, "evaluate_equal": True,
                      "grid_param_spec": "P('model',)", "grid_equal": True, "attack_sharded_spec": "P('data',)",
                      "attack_equal": True, "resume_8_to_1": True, "resume_1_to_8": True}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(workdir, out, kill_at):
    port = _free_port()
    return [_python([ROOT / "tests" / "multihost_worker.py", workdir, out, kill_at],
                    env={"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
                         "JAX_PROCESS_ID": str(i)}, start_new_session=True) for i in range(2)]


def test_two_processes_train_like_one_and_resume_after_a_kill(tmp_path):
    single = _python([ROOT / "tests" / "multihost_worker.py", tmp_path / "single", tmp_path / "single.npz", -1])
    first = _two_processes(tmp_path / "multi", tmp_path / "multi.npz", 6)   # process 1 dies at step 6
    try:
        first[1].communicate(timeout=300)
        assert first[1].returncode == 3
    finally:
        for p in first:   # process 0 waits in a collective for its dead peer: the launcher ends it
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    committed = [int(p.name) for p in (tmp_path / "multi" / "fit" / "checkpoints").iterdir() if p.name.isdigit()]
    assert committed and max(committed) < 6, committed   # the killed run left a checkpoint (step 2 or 4)
    second = _two_processes(tmp_path / "multi", tmp_path / "multi.npz", -1)   # restarted on the same workdir
    report = json.loads(_finish(second[0]).strip().splitlines()[-1])
    _finish(second[1])
    assert report["processes"] == 2 and report["devices"] == 8
    assert report["first_step"] == max(committed) + 2     # resumed from the checkpoint, not from step 0
    _finish(single)
    a, b = np.load(tmp_path / "single.npz"), np.load(tmp_path / "multi.npz")
    assert sorted(a.files) == sorted(b.files) and any(k.startswith("grid") for k in a.files)
    for k in a.files:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5, err_msg=k)
