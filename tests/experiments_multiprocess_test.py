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
distributed.initialize()
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


@pytest.fixture
def jax_initialize(monkeypatch):
  """Records jax.distributed.initialize's calls instead of making them."""
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize",
                      lambda *args: calls.append(args))
  return calls


def test_settings_come_from_flags_else_jax_variables(jax_initialize):
  env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
         "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
  assert distributed.initialize(environ=env)
  # Flags win over the environment.
  assert distributed.initialize("auto", "h:1", 2, 0, environ=env)
  assert jax_initialize == [("10.0.0.1:1234", 4, 3), ("h:1", 2, 0)]


def test_when_jax_is_initialized(jax_initialize):
  assert not distributed.initialize(environ={})
  assert distributed.initialize("on", environ={})
  assert not distributed.initialize("off", "h:1", 2, 0, environ={})
  assert not distributed.initialize("auto", "h:1", 1, 0, environ={})
  slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]",
           "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}
  assert distributed.initialize(environ=slurm)
  assert jax_initialize == [(None, None, None)] * 2
  assert not distributed.launched_several({**slurm, "SLURM_NTASKS": "1"})
  assert distributed.launched_several(
      {"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:1",
       "OMPI_COMM_WORLD_SIZE": "8"})
  assert distributed.launched_several({"TPU_WORKER_HOSTNAMES": "t-0,t-1"})
  assert not distributed.launched_several({"TPU_WORKER_HOSTNAMES": "t-0"})


@pytest.mark.parametrize("args, environ, match", [
    (("sometimes",), {}, "mode"),
    (("auto", "nohost", 2, 0), {}, "coordinator_address"),
    ((), {"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES"),
])
def test_bad_settings_are_named(jax_initialize, args, environ, match):
  with pytest.raises(ValueError, match=match):
    distributed.initialize(*args, environ=environ)
  assert jax_initialize == []


def test_jax_checks_name_the_flags():
  # JAX's own checks of the settings, which run before it starts anything.
  script = (
      "from experiments import distributed\n"
      "for args in [('h:1', 2, 2), ('h:1', 2, None)]:\n"
      "  try:\n"
      "    distributed.initialize('auto', *args, environ={})\n"
      "  except ValueError as e:\n"
      "    print(e)\n")
  out = subprocess.run([sys.executable, "-c", script], cwd=REPO, text=True,
                       capture_output=True, timeout=120,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  lines = out.stdout.splitlines()
  assert len(lines) == 2, out.stderr[-2000:]
  assert "process_id < num_processes" in lines[0]
  assert "process id of the current process must be defined" in lines[1]
  assert all("--process_id" in line for line in lines)
