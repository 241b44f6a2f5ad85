"""``config.array``: the real array of a run, to the emulator's models."""

import math

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rsjax
from rsjax import kernels as rk

from experiments import array
from experiments import evaluation
from experiments import pipeline
from experiments import stages
from experiments.configs import default

HW = rsjax.HardwareSpec(adc_bits=4)


def test_defaults_are_the_ideal_crossbar():
  config = default.get_config()
  assert array.models(config.array, HW, jax.random.key(0)) == {
      "device": None, "wires": None, "adc": None}


def test_every_field_reaches_its_model():
  a = array.defaults()
  a.on_off_ratio = 20.0
  a.programming = "wan2022"
  a.g_max_us = 30.0
  a.stuck_at_0 = 0.01
  a.drift_t = 3600.0
  a.drift_nu_max = 0.05
  a.drift_compensate = True
  a.read_sigma = 0.02
  a.read_form = "proportional"
  a.r_row, a.r_col, a.r_col_terminal = 1e-4, 2e-4, 1e-3
  a.placement = False
  a.adc_dnl_sigma = 0.1
  m = array.models(a, HW, jax.random.key(0))
  assert m["device"] == rk.Device(
      20.0, rk.WanRRAM2022(30.0), rk.StuckAt(0.01, 0.0),
      rk.Drift(3600.0, 1.0, 0.0, 0.05, 0.0, True),
      rk.ReadNoise(0.02, "proportional"))
  assert m["wires"] == rk.Wires(1e-4, 2e-4, 0.0, 1e-3, False)
  assert len(m["adc"].inl) == HW.adc_max
  # The converter is drawn per resolution from the run's key, the same every
  # time, and left ideal for a lossless reference.
  assert m["adc"] == array.models(a, HW, jax.random.key(0))["adc"]
  assert len(array.models(a, HW.replace(adc_bits=6),
                          jax.random.key(0))["adc"].inl) == 63
  assert array.models(a, HW, jax.random.key(0), adc=False)["adc"] is None
  a.programming, a.program_sigma = "inverse", 0.1
  assert array.models(a, HW, jax.random.key(0))["device"].programming == (
      rk.Programming(0.1, "inverse"))
  a.on_off_ratio = 0.0
  assert math.isinf(array.models(a, HW, jax.random.key(0))[
      "device"].on_off_ratio)


@pytest.mark.parametrize("field,value,match", [
    ("on_off_ratio", 1.0, "on_off_ratio"),
    ("on_off_ratio", -5.0, "on_off_ratio"),
    ("programming", "pcm", "array.programming"),
    ("program_sigma", 0.1, "array.programming"),
    ("r_row", -1e-3, "Wires.r_row"),
    ("drift_t", -1.0, "Drift.t"),
    ("g_max_us", 100.0, None),
])
def test_bad_array_fields_fail_before_training(field, value, match):
  config = default.get_config()
  config.array[field] = value
  if field == "g_max_us":
    config.array.programming = "wan2022"
    match = "g_max_us"
  with pytest.raises(ValueError, match=match) as err:
    pipeline.check(config)
  assert "config.array" in str(err.value)


def _training_array(config):
  """What the ``hwaware`` stage trains against, from ``config``."""
  models = array.for_run(config, jax.random.key(0), HW)
  return stages.training_array(models, config.hwaware)


def test_hwaware_noise_joins_the_array_device():
  config = default.get_config()
  config.array.on_off_ratio = 10.0
  config.array.r_row = 1e-4
  config.hwaware.program_sigma = 0.05
  m = _training_array(config)
  assert m["device"] == rk.Device(10.0, rk.Programming(0.05))
  assert m["wires"] == rk.Wires(1e-4)
  config.array.programming, config.array.program_sigma = "independent", 0.1
  with pytest.raises(ValueError, match="describe the device once"):
    _training_array(config)


def test_hwaware_noise_is_checked_and_zero_is_none():
  config = default.get_config()
  assert _training_array(config)["device"] is None
  config.hwaware.stuck_at_0 = 0.01
  m = _training_array(config)
  assert m["device"] == rk.Device(faults=rk.StuckAt(0.01))
  config.hwaware.stuck_at_1 = 0.995
  with pytest.raises(ValueError,
                     match=r"config\.hwaware: StuckAt\.p0 \+ p1 must be <= 1"):
    _training_array(config)
  config.hwaware.stuck_at_0 = config.hwaware.stuck_at_1 = 0.0
  config.hwaware.program_sigma = -0.1
  with pytest.raises(ValueError,
                     match=r"config\.hwaware: Programming\.sigma must be >= 0"):
    _training_array(config)


class _Net(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = nn.relu(nn.Dense(16)(x.reshape(x.shape[0], -1)))
    return nn.Dense(3)(x)


def test_emulated_accuracy_reads_with_noise_per_batch():
  rng = np.random.default_rng(0)
  batches = [{"image": jnp.asarray(rng.uniform(0, 1, (8, 4, 4, 1)),
                                   jnp.float32),
              "label": jnp.asarray(rng.integers(0, 3, 8)),
              "mask": jnp.ones(8)} for _ in range(3)]
  model = _Net()
  variables = model.init(jax.random.key(0), batches[0]["image"])
  em = evaluation.Emulation(model, variables, {}, [batches[0]["image"]])
  acc = lambda models, key: evaluation.emulated_accuracy(
      em, HW, lambda: batches, key=key, array_models=models)
  noisy = {"device": rk.Device(read=rk.ReadNoise(0.5)), "wires": None,
           "adc": None}
  a = acc(noisy, jax.random.key(1))
  assert a == acc(noisy, jax.random.key(1))
  assert 0.0 <= a <= 1.0
  assert acc(None, jax.random.key(1)) == acc(
      {"device": None, "wires": None, "adc": None}, jax.random.key(2))
