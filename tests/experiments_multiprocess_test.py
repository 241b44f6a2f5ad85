"""The pipeline on two processes (JAX's multi-process runtime, CPU
collectives over a coordinator on 127.0.0.1) matches one process, and a run
killed on both processes resumes; plus the launch logic without processes."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import distributed
from experiments import workdir as workdir_lib
# The session fixture, imported so pytest finds it in this module.
from experiments_fixtures import fmnist_data_dir  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Trains the baseline (4 steps, batch 16) and evaluates it on 200 images,
# in eval batches of 100 of which each process reads its 50 rows.
_DRIVER = r"""
import json, sys
from experiments import distributed, pipeline
from experiments.configs import default
distributed.initialize(distributed.launch_from_env())
data_dir, workdir, kill_step = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = default.get_config()
config.data.data_dir = data_dir
config.data.train_limit, config.data.eval_limit = 1000, 200
config.train.steps, config.train.batch_size = 4, 16
config.train.eval_batch_size, config.train.warmup_steps = 100, 1
config.train.log_every, config.train.checkpoint_every = 1, 2

def kill(stage, step):
  if step == kill_step:
    raise SystemExit(3)

results = pipeline.run(config, workdir, until="train", step_callback=kill)
print("RESULT" + json.dumps(results["train"]), flush=True)
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(num_processes, data_dir, workdir, kill_step=-1):
  """Runs the driver on ``num_processes`` processes; their outputs."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                        " --xla_force_host_platform_device_count=1"))
  for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(k, None)
  if num_processes > 1:
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}",
               JAX_NUM_PROCESSES=str(num_processes))
  procs = []
  for i in range(num_processes):
    if num_processes > 1:
      env = dict(env, JAX_PROCESS_ID=str(i))
    procs.append(subprocess.Popen(
        [sys.executable, "-c", _DRIVER, data_dir, workdir, str(kill_step)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True))
  outs = []
  for p in procs:
    try:
      stdout, stderr = p.communicate(timeout=400)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    outs.append((p.returncode, stdout, stderr))
  return outs


def _result(out):
  code, stdout, stderr = out
  assert code == 0, stderr[-3000:]
  line = [l for l in stdout.splitlines() if l.startswith("RESULT")][-1]
  return json.loads(line[len("RESULT"):])


def _param_sums(workdir):
  baseline = workdir_lib.load_tree(
      os.path.join(workdir, "checkpoints", "baseline"))
  return [float(np.asarray(x, np.float64).sum()) for x in
          jax.tree_util.tree_leaves(baseline)]


def test_two_processes_match_one_and_resume(tmp_path, fmnist_data_dir):
  one_dir, two_dir = str(tmp_path / "one"), str(tmp_path / "two")
  one = _result(_launch(1, fmnist_data_dir, one_dir)[0])

  # Killed on both processes after step 3 (the checkpoint is at step 2),
  # then resumed on both.
  killed = _launch(2, fmnist_data_dir, two_dir, kill_step=3)
  assert [code for code, _, _ in killed] == [3, 3], killed[0][2][-3000:]
  assert not os.path.exists(os.path.join(two_dir, "state.json"))
  resumed = [_result(out) for out in _launch(2, fmnist_data_dir, two_dir)]

  # Every process has the global metrics; they match one process (measured:
  # the same accuracy, eval loss within 4e-8 relative, parameters within
  # 2e-7 absolute).
  assert resumed[0] == resumed[1]
  for key in ("accuracy_float", "eval_loss"):
    np.testing.assert_allclose(resumed[0][key], one[key], rtol=1e-5,
                               atol=1e-6)
  np.testing.assert_allclose(_param_sums(two_dir), _param_sums(one_dir),
                             rtol=1e-5, atol=1e-5)
  # Process 0 alone wrote the workdir's files: one log with the resume.
  with open(os.path.join(two_dir, "log.txt")) as f:
    log = f.read()
  assert "[train] resumed from the checkpoint at step 2" in log
  assert "2 device(s) in 2 process(es)" in log
  state = json.load(open(os.path.join(two_dir, "state.json")))
  assert state["stages"]["train"]["results"] == resumed[0]


# --- The launch decision, without processes ----------------------------------


def test_launch_from_env_reads_jax_variables():
  env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
         "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
  launch = distributed.launch_from_env(environ=env)
  assert launch == distributed.Launch("auto", "10.0.0.1:1234", 4, 3)
  assert distributed.should_initialize(launch, environ={})
  # Flags win over the environment.
  assert distributed.launch_from_env(
      "auto", "h:1", 2, 0, environ=env) == distributed.Launch("auto", "h:1",
                                                              2, 0)


def test_should_initialize():
  assert not distributed.should_initialize(distributed.Launch(), environ={})
  assert distributed.should_initialize(distributed.Launch("on"), environ={})
  assert not distributed.should_initialize(
      distributed.Launch("off", "h:1", 2, 0), environ={})
  assert not distributed.should_initialize(
      distributed.Launch("auto", "h:1", 1, 0), environ={})
  slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]",
           "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}
  assert distributed.detected_launcher(slurm) == "slurm"
  assert distributed.should_initialize(distributed.Launch(), environ=slurm)
  assert distributed.detected_launcher({**slurm, "SLURM_NTASKS": "1"}) is None
  mpi = {"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:1",
         "OMPI_COMM_WORLD_SIZE": "8"}
  assert distributed.detected_launcher(mpi) == "openmpi"
  assert distributed.detected_launcher(
      {"TPU_WORKER_HOSTNAMES": "t-0,t-1"}) == "cloud_tpu"
  assert distributed.detected_launcher(
      {"TPU_WORKER_HOSTNAMES": "t-0"}) is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="sometimes"), "mode"),
    (dict(num_processes=0), "num_processes"),
    (dict(num_processes=2, process_id=2), "process_id"),
    (dict(coordinator_address="nohost"), "coordinator_address"),
])
def test_launch_rejects_bad_values(kwargs, match):
  with pytest.raises(ValueError, match=match):
    distributed.Launch(**kwargs)


def test_bad_environment_variable_is_named():
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES"):
    distributed.launch_from_env(environ={"JAX_NUM_PROCESSES": "two"})


def test_incomplete_explicit_launch_is_an_error():
  with pytest.raises(ValueError, match="process_id"):
    distributed.initialize(distributed.Launch("auto", "h:1", 2), environ={})
