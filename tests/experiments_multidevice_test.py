"""Data-parallel training (with and without distillation) on 4 emulated CPU
devices matches 1 device."""

import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = r"""
import json, sys, tempfile
import jax, numpy as np
from experiments import models, train
mesh = train.make_mesh()
model = models.create_model("lenet5", num_classes=10)
variables = models.init_variables(model, jax.random.key(0), (28, 28, 1))
tx = train.make_optimizer("sgd", 0.05, 5, 1, 1e-4)
state = train.create_state(model, variables, tx)

def get_batch(step):
  rng = np.random.default_rng(step)
  return {"image": rng.normal(size=(16, 28, 28, 1)).astype(np.float32),
          "label": rng.integers(0, 10, 16).astype(np.int32)}

losses = []
def record(name, step):
  pass
with tempfile.TemporaryDirectory() as d:
  loop = train.TrainLoop("train", 5, get_batch, d, checkpoint_every=5,
                         log_every=1)
  state = loop.run(state, mesh)
# The same with distillation from the initial variables (a teacher
# replicated over the mesh, the student's batch sharded); fresh copies, as
# the first loop donated its state's buffers.
variables = models.init_variables(model, jax.random.key(0), (28, 28, 1))
teacher = models.init_variables(model, jax.random.key(0), (28, 28, 1))
distill = train.Distillation(
    lambda v, x: model.apply(v, x, train=False), 0.5, 2.0)
with tempfile.TemporaryDirectory() as d:
  kd_loop = train.TrainLoop("kd", 3, get_batch, d, checkpoint_every=3,
                            log_every=1, distill=distill,
                            teacher_variables=teacher)
  kd_state = kd_loop.run(train.create_state(model, variables, tx), mesh)
kd_flat = jax.tree_util.tree_leaves(train.state_variables(kd_state))
evals = train.evaluate(model, train.state_variables(state),
                       iter([dict(get_batch(99), mask=np.ones(16, bool))]),
                       mesh)
flat = jax.tree_util.tree_leaves(train.state_variables(state))
print("RESULT" + json.dumps({
    "devices": mesh.devices.size,
    "sharding": str(state.params["conv1"]["conv"]["kernel"].sharding),
    "eval_loss": evals["loss"],
    "params": [float(np.asarray(x, np.float64).sum()) for x in flat],
    "kd_params": [float(np.asarray(x, np.float64).sum()) for x in kd_flat],
}))
"""


def _run(devices):
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={devices}")
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
  return json.loads(line[len("RESULT"):])


def test_four_devices_match_one():
  one, four = _run(1), _run(4)
  assert one["devices"] == 1 and four["devices"] == 4
  assert "NamedSharding" in four["sharding"]
  np.testing.assert_allclose(four["eval_loss"], one["eval_loss"], rtol=1e-4)
  np.testing.assert_allclose(four["params"], one["params"], rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_allclose(four["kd_params"], one["kd_params"], rtol=1e-4,
                             atol=1e-4)
  assert not np.allclose(one["kd_params"], one["params"])
