"""A hardware-aware model keeps its calibration through save and load.

Trains a small shared CNN (BatchNorm kept) on scikit-learn's digits through
the emulator at a 3-bit calibrated ADC, saves it with the calibration it
trained with, and emulates the loaded file in a fresh process with no
calibration argument: the accuracy is the training's own emulated accuracy.
"""

import json
import os
import subprocess
import sys
import textwrap

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rsjax
from rsjax import kernels as rk

HW = rsjax.HardwareSpec(adc_bits=3, adc_mode="calibrated")


class Net(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(8, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.relu(x).reshape(x.shape[0], -1)
    return nn.Dense(10)(x)


def _digits():
  datasets = pytest.importorskip("sklearn.datasets")
  d = datasets.load_digits()
  x = np.asarray(d.images[..., None] / 16.0, np.float32)
  return x, np.asarray(d.target, np.int32)


def _accuracy(logits, y):
  return float(np.mean(np.argmax(np.asarray(logits), -1) == y))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """``(path, emulated accuracy at the end of training, logits)``."""
  x, y = _digits()
  xt, yt = x[1200:], y[1200:]
  x, y = jnp.asarray(x), jnp.asarray(y)
  model = Net()
  variables = model.init(jax.random.key(0), x[:2])
  ce = optax.softmax_cross_entropy_with_integer_labels
  tx = optax.adam(3e-3)

  @jax.jit
  def float_step(v, s, i):
    idx = jax.random.randint(jax.random.key(i), (128,), 0, 1200)

    def loss(p):
      logits, upd = model.apply({**v, "params": p}, x[idx], train=True,
                                mutable=["batch_stats"])
      return ce(logits, y[idx]).mean(), upd
    g, upd = jax.grad(loss, has_aux=True)(v["params"])
    with jax.numpy_dtype_promotion("standard"):  # optax's step counts
      u, s = tx.update(g, s, v["params"])
    return {**upd, "params": optax.apply_updates(v["params"], u)}, s

  s = tx.init(variables["params"])
  for i in range(40):
    variables, s = float_step(variables, s, i)

  # Shared one-shot (k = 2 per row-block), then fine-tuned on the emulator.
  rules = [rsjax.Rule("kernel$", k=2)]
  params = jax.tree_util.tree_map_with_path(
      lambda kp, w: rsjax.compress_kernel(
          w, HW, 2, key=jax.random.key(1)).to_kernel()
      if rsjax.path_str(kp).endswith("kernel") else w, variables["params"])
  ft = rsjax.centroid_finetune(optax.adam(1e-3), rules, HW)
  opt_state = ft.init(params)
  stats = variables["batch_stats"]
  calib = rk.calibrate_hwaware(
      model, [x[:128]], HW, variables={"params": params, "batch_stats": stats})

  @jax.jit
  def hw_step(params, stats, opt_state, calib, i):
    idx = jax.random.randint(jax.random.key(100 + i), (128,), 0, 1200)

    def loss(p):
      v = {"params": rsjax.training_params(p, opt_state),
           "batch_stats": stats}
      logits, upd = rk.hwaware(model, HW, calib, variables=v)(
          x[idx], train=True, mutable=["batch_stats"])
      return ce(logits, y[idx]).mean(), upd
    g, upd = jax.grad(loss, has_aux=True)(params)
    with jax.numpy_dtype_promotion("standard"):
      u, opt_state = ft.update(g, opt_state, params)
    return (optax.apply_updates(params, u), upd["batch_stats"], opt_state)

  for i in range(6):
    if i == 3:
      current = {"params": rsjax.training_params(params, opt_state),
                 "batch_stats": stats}
      calib = rk.calibrate_hwaware(model, [x[128 * i:128 * (i + 1)]], HW,
                                   variables=current, previous=calib)
    params, stats, opt_state = hw_step(params, stats, opt_state, calib, i)

  final = {"params": rsjax.training_params(params, opt_state),
           "batch_stats": stats}
  logits = rk.hwaware(model, HW, calib, variables=final)(xt, train=False)
  layers = {f"params/{k}": v for k, v in
            rsjax.to_compressed(params, opt_state).items()}
  path = str(tmp_path_factory.mktemp("hwaware") / "model.rsjax.npz")
  rsjax.save_compressed(path, layers, HW, params=jax.device_get(final),
                        calibration=calib)
  return path, _accuracy(logits, yt), np.asarray(logits), calib


_FRESH = textwrap.dedent("""
    import json, sys
    import numpy as np
    import jax.numpy as jnp
    import rsjax
    from rsjax import kernels as rk
    sys.path.insert(0, {tests!r})
    from hwaware_model_file_test import Net, _digits, _accuracy
    x, y = _digits()
    loaded = rsjax.load_compressed({path!r})
    variables = {{k: v for k, v in loaded.params.items()}}
    model = Net()
    # No calibration argument: the file's own is used.
    calib = rk.calibrate(model, [x[:64]], variables=variables, train=False)
    plans = rk.program(calib, loaded.hw, compressed=loaded)
    logits = rk.emulate(model, plans, variables=variables)(
        jnp.asarray(x[1200:]), train=False)
    np.save({out!r}, np.asarray(logits))
    print(json.dumps({{"accuracy": _accuracy(logits, y[1200:])}}))
""")


def test_loaded_model_emulates_with_its_training_calibration(trained,
                                                             tmp_path):
  path, accuracy, logits, _ = trained
  out = str(tmp_path / "logits.npy")
  script = _FRESH.format(tests=os.path.dirname(__file__), path=path, out=out)
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])["accuracy"]
  assert got == accuracy
  # Equal up to the float rounding of the training forward's
  # straight-through sum (y_float + (y_emul - y_float)).
  np.testing.assert_allclose(np.load(out), logits, rtol=1e-5, atol=1e-5)


def test_calibration_round_trips_and_is_checked(trained):
  path, _, _, calib = trained
  loaded = rsjax.load_compressed(path)
  again = rk.HwCalibration.from_dict(loaded.calibration)
  assert again.to_dict() == calib.to_dict()
  for name, scale in calib.x_scales.items():
    assert np.float32(again.x_scales[name]) == np.float32(scale)
  x, _ = _digits()
  model = Net()
  with pytest.raises(ValueError, match="adc_bits"):
    rk.program(rk.calibrate(model, [x[:64]], variables=loaded.params,
                            train=False),
               HW.replace(adc_bits=4), compressed=loaded)
  with pytest.raises(ValueError, match="fold_bn"):
    rk.program(rk.calibrate(model, [x[:64]], variables=loaded.params,
                            train=False), HW, compressed=loaded, fold_bn=True)
  with pytest.raises(ValueError, match="layers"):
    rk.program(rk.calibrate(model, [x[:64]], variables=loaded.params,
                            rules="Conv", train=False), HW, compressed=loaded)
  with pytest.raises(ValueError, match="'data'"):
    rk.program(rk.calibrate(model, [x[:64]], variables=loaded.params,
                            train=False),
               HW, compressed=loaded, calibration="fresh")
  # Told otherwise, it calibrates afresh from the batches (BN folded again).
  fresh = rk.program(rk.calibrate(model, [x[:64]], variables=loaded.params,
                                  train=False),
                     HW.replace(adc_bits=4), compressed=loaded,
                     calibration="data")
  assert set(fresh) == set(calib.x_scales)
  bad = dict(loaded.calibration, per="rows")
  with pytest.raises(ValueError, match="per"):
    rk.HwCalibration.from_dict(bad)
  with pytest.raises(ValueError, match="adc_ranges"):
    rk.HwCalibration.from_dict(dict(loaded.calibration, adc_ranges=None))
