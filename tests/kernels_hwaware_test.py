"""Hardware-aware training: whole models through the emulator, STE backward."""

import warnings

from flax import linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rsjax
from rsjax import kernels as rk
from rsjax._src import blockops

LOSSY = rsjax.HardwareSpec(adc_bits=3)
LOSSLESS = rsjax.HardwareSpec(adc_bits=5)


class Net(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))
    x = nn.Conv(4, (3, 3), padding="VALID", use_bias=False)(x)
    x = nn.relu(x).reshape(x.shape[0], -1)
    return nn.Dense(3)(x)


class NnxNet(nnx.Module):

  def __init__(self, rngs):
    self.conv = nnx.Conv(2, 4, (3, 3), strides=2, rngs=rngs)
    self.head = nnx.Linear(4 * 4 * 4, 3, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.conv(x))
    return self.head(x.reshape(x.shape[0], -1))


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.standard_normal((4, 8, 8, 2)), jnp.float32)


def _net():
  model = Net()
  x = _batch()
  variables = model.init(jax.random.key(0), x)
  return model, jax.tree.map(lambda a: a * 2.0, variables), x


@pytest.mark.parametrize("hw, jit", [
    (LOSSY, False), (LOSSY.replace(adc_mode="calibrated"), True)])
def test_linen_forward_equals_emulator(hw, jit):
  model, variables, x = _net()
  calib = rk.calibrate_hwaware(model, [x], hw, variables=variables)
  assert calib.signed == ("Conv_0",)
  assert (calib.adc_ranges is None) == (hw.adc_mode != "calibrated")
  layers = rk.program(rk.calibrate(model, [x], variables=variables), hw,
                      fold_bn=False)
  fwd = lambda v, a: rk.hwaware(model, hw, calib, variables=v)(a)
  fwd = jax.jit(fwd) if jit else fwd
  y = fwd(variables, x)
  y_ref = rk.emulate(model, layers, variables=variables)(x)
  np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-5,
                             atol=1e-5)
  y_float = model.apply(variables, x)
  assert not np.allclose(np.asarray(y), np.asarray(y_float), atol=1e-2)


def test_lossless_forward_equals_quantized_dense():
  """A one-layer model: the numbers of the quantized layer (NumPy)."""
  model = nn.Dense(5)
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.random((6, 20)), jnp.float32)
  variables = model.init(jax.random.key(1), x)
  calib = rk.calibrate_hwaware(model, [x], LOSSLESS, variables=variables)
  y = rk.hwaware(model, LOSSLESS, calib, variables=variables)(x)
  s = float(calib.x_scales[""]) if "" in calib.x_scales else None
  assert s is not None, calib.x_scales
  k = np.asarray(variables["params"]["kernel"], np.float64)
  qmax = 2 ** (LOSSLESS.weight_bits - 1) - 1
  w_scale = np.float32(np.abs(k).max() / qmax)
  qw = np.clip(np.round(k / w_scale), -qmax, qmax)
  qx = np.clip(np.round(np.asarray(x) / s), 0, 255)
  y_ref = (qx @ qw) * s * w_scale + np.asarray(variables["params"]["bias"])
  np.testing.assert_allclose(np.asarray(y), y_ref, rtol=1e-5, atol=1e-5)


def test_layer_forward_is_the_dequantized_emulation():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(0, 1, (4, 19)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((19, 3)) * 0.1, jnp.float32)
  scale = 1.0 / 255
  hw = rsjax.HardwareSpec(adc_bits=4)
  y = rk.hwaware_layer(x, w, None, hw, x_scale=scale)
  qx = rk.quantize_inputs(x, scale, hw)
  qw, ws = rsjax.quantize_weights(w, hw.weight_bits)
  want = np.asarray(rk.crossbar_matmul(qx, qw, hw), np.float32) * (scale * ws)
  np.testing.assert_allclose(np.asarray(y), want, rtol=1e-6, atol=1e-6)
  # Straight through: d/dw sum(y^2) = x^T (2 y), d/dx = (2 y) w^T.
  f = lambda x, w: jnp.sum(rk.hwaware_layer(x, w, None, hw,
                                            x_scale=scale) ** 2)
  gx, gw = jax.jit(jax.grad(f, argnums=(0, 1)))(x, w)
  np.testing.assert_allclose(np.asarray(gw), np.asarray(x.T @ (2 * y)),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(gx), np.asarray((2 * y) @ w.T),
                             rtol=1e-4, atol=1e-5)
  # Inputs clipped at either end of the range get no gradient.
  x = x.at[0, 0].set(-1.0).at[1, 1].set(5.0)
  gx = jax.grad(lambda x: jnp.sum(rk.hwaware_layer(
      x, w, None, hw, x_scale=scale)))(x)
  assert gx[0, 0] == 0 and gx[1, 1] == 0 and gx[2, 2] != 0


@pytest.mark.parametrize("jit", [False, True])
def test_gradient_is_the_float_gradient_where_nothing_clips(jit):
  model = nn.Conv(3, (3, 3))
  x = jnp.abs(_batch(2))
  variables = model.init(jax.random.key(2), x)
  calib = rk.calibrate_hwaware(model, [x], LOSSY, variables=variables)
  probe = jnp.asarray(np.random.default_rng(3).standard_normal(
      (4, 8, 8, 3)), jnp.float32)

  def loss(params, fn):
    return jnp.sum(fn({"params": params}, x) * probe)

  hwaware = lambda v, a: rk.hwaware(model, LOSSY, calib, variables=v)(a)
  grad = jax.grad(loss)
  grad = jax.jit(grad, static_argnums=1) if jit else grad
  g = grad(variables["params"], hwaware)
  g_ref = jax.grad(loss)(variables["params"], model.apply)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize("jit", [False, True])
def test_saturation_backward(jit):
  # On a lossless ADC it is the straight-through gradient (signed inputs of
  # Conv_1, a bias-free layer, the Dense head); on a 3-bit one it differs.
  model, variables, x = _net()
  probe = jnp.asarray(np.random.default_rng(4).standard_normal((4, 3)),
                      jnp.float32)

  def grads(hw, backward):
    calib = rk.calibrate_hwaware(model, [x], hw, variables=variables)

    def loss(params):
      y = rk.hwaware(model, hw, calib, variables={"params": params},
                     backward=backward)(x)
      return jnp.sum(y * probe)
    fn = jax.jit(jax.grad(loss)) if jit else jax.grad(loss)
    return jax.tree.leaves(fn(variables["params"]))

  for a, b in zip(grads(LOSSLESS, "saturation"), grads(LOSSLESS, "ste")):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-4)
  assert any(not np.allclose(np.asarray(a), np.asarray(b), atol=1e-3)
             for a, b in zip(grads(LOSSY, "saturation"), grads(LOSSY, "ste")))
  calib = rk.calibrate_hwaware(model, [x], LOSSY, variables=variables)
  with pytest.raises(ValueError, match="backward"):
    rk.hwaware(model, LOSSY, calib, variables=variables, backward="clip")(x)


def test_noise_is_keyed_per_step():
  model, variables, x = _net()
  calib = rk.calibrate_hwaware(model, [x], LOSSY, variables=variables)
  noise = rk.Device(programming=rk.Programming(0.3), faults=rk.StuckAt(0.01))
  fwd = jax.jit(lambda v, a, k: rk.hwaware(
      model, LOSSY, calib, variables=v, key=k, device=noise)(a))
  y0 = fwd(variables, x, jax.random.key(0))
  y0b = fwd(variables, x, jax.random.key(0))
  y1 = fwd(variables, x, jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(y0), np.asarray(y0b))
  assert not np.allclose(np.asarray(y0), np.asarray(y1))
  with pytest.raises(ValueError, match="key"):
    rk.hwaware(model, LOSSY, calib, variables=variables, device=noise)(x)


def test_recalibration_keeps_or_raises_input_scales():
  hw = LOSSY.replace(adc_mode="calibrated")
  model, variables, x = _net()
  calib = rk.calibrate_hwaware(model, [x], hw, variables=variables)
  bigger = [x * 3.0]
  # 'fixed' keeps the scales, and says which layers now saturate.
  with pytest.warns(rk.InputSaturationWarning, match="Conv_0"):
    fixed = rk.calibrate_hwaware(model, bigger, hw, variables=variables,
                                 previous=calib, scales="fixed")
  # The default raises them: nothing saturates, nothing to warn about.
  with warnings.catch_warnings():
    warnings.simplefilter("error", rk.InputSaturationWarning)
    running = rk.calibrate_hwaware(model, bigger, hw, variables=variables,
                                   previous=calib)
    rk.calibrate_hwaware(model, [x], hw, variables=variables, previous=calib,
                         scales="fixed")
  for name in calib.x_scales:
    np.testing.assert_allclose(fixed.x_scales[name], calib.x_scales[name],
                               rtol=1e-6)
  np.testing.assert_allclose(running.x_scales["Conv_0"],
                             3.0 * calib.x_scales["Conv_0"], rtol=1e-5)
  # The step's metric: the fraction of inputs beyond the range.
  for c, expect_some in ((fixed, True), (running, False)):
    sat = {}
    rk.hwaware(model, hw, c, variables=variables, saturation=sat)(x * 3.0)
    assert set(sat) == set(c.x_scales)
    assert (float(sat["Conv_0"]) > 0.01) == expect_some, sat
  with pytest.raises(ValueError, match="scales"):
    rk.calibrate_hwaware(model, [x], hw, variables=variables, previous=calib,
                         scales="ema")
  with pytest.raises(ValueError, match="calibrated"):
    rk.hwaware(model, hw,
               rk.calibrate_hwaware(model, [x], LOSSY, variables=variables),
               variables=variables)


def test_recalibration_is_a_traced_argument():
  # A re-calibrated HwCalibration passed to a jitted step is used without a
  # second compile (it is a pytree of arrays; its static parts are equal).
  hw = LOSSY.replace(adc_mode="calibrated")
  model, variables, x = _net()
  calib = rk.calibrate_hwaware(model, [x], hw, variables=variables)
  recal = rk.calibrate_hwaware(model, [x * 3.0], hw, variables=variables,
                               previous=calib, scales="running_max")
  traces = []

  @jax.jit
  def fwd(v, c, a):
    traces.append(1)
    return rk.hwaware(model, hw, c, variables=v)(a)

  y0, y1 = fwd(variables, calib, x), fwd(variables, recal, x)
  assert len(traces) == 1
  assert not np.allclose(np.asarray(y0), np.asarray(y1))
  np.testing.assert_allclose(
      np.asarray(y1),
      np.asarray(rk.hwaware(model, hw, recal, variables=variables)(x)),
      rtol=1e-5, atol=1e-5)


def test_centroid_finetune_through_the_emulator_stays_shared():
  model = nn.Dense(4)
  hw = LOSSY
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.random((16, 18)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 4, 16))
  variables = model.init(jax.random.key(4), x)
  rules = [rsjax.Rule("kernel", k=1)]
  plan = rsjax.make_plan(variables["params"], rules, hw)["kernel"]
  codebook = jnp.asarray(rng.standard_normal((2, 1, 9, 2)), jnp.float32)
  index = jnp.asarray([[0, -1], [0, 0]], jnp.int32)
  params = {"kernel": blockops.shared_kernel(codebook, index, plan),
            "bias": variables["params"]["bias"]}
  tx = rsjax.centroid_finetune(optax.sgd(0.1), rules, hw)
  state = tx.init(params)
  calib = rk.calibrate_hwaware(model, [x], hw, variables={"params": params})

  @jax.jit
  def step(params, state, key):
    def loss(p):
      v = {"params": rsjax.training_params(p, state)}
      logits = rk.hwaware(model, hw, calib, variables=v, key=key,
                          device=rk.Device(programming=rk.Programming(0.1)))(x)
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, labels).mean()
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  start = params["kernel"]
  for i in range(3):
    params, state = step(params, state, jax.random.key(i))
  layer = state.layers["kernel"]
  # The model the stages save: the exact shared values (the raw params are
  # the same up to the rounding of adding the update).
  params = rsjax.training_params(params, state)
  assert not np.allclose(np.asarray(params["kernel"]), np.asarray(start))
  np.testing.assert_array_equal(
      np.asarray(params["kernel"]),
      np.asarray(blockops.shared_kernel(layer.codebook, index, plan)))
  compressed = rsjax.to_compressed(params, rules=rules, hw=hw)["kernel"]
  np.testing.assert_array_equal(np.asarray(compressed.to_kernel()),
                                np.asarray(params["kernel"]))
  np.testing.assert_array_equal(np.asarray(compressed.index), index)


def test_nnx_forward_equals_emulator_and_trains():
  model = NnxNet(nnx.Rngs(0))
  x = _batch()
  hw = LOSSY
  calib = rk.calibrate_hwaware(model, [x], hw)
  layers = rk.program(rk.calibrate(model, [x]), hw, fold_bn=False)
  y_ref = rk.emulate(model, layers)(x)
  y = rk.hwaware(model, hw, calib)(x)
  np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-5,
                             atol=1e-5)
  assert isinstance(model.conv, nnx.Conv)  # restored

  def loss(m, backward="ste"):
    return jnp.sum(rk.hwaware(m, hw, calib, backward=backward)(x) ** 2)

  grads = nnx.jit(nnx.grad(loss))(model)
  assert float(jnp.sum(jnp.abs(grads["conv"]["kernel"][...]))) > 0
  assert isinstance(model.head, nnx.Linear)
  # The saturation-aware backward reaches NNX layers too (3-bit ADC).
  sat = nnx.jit(nnx.grad(lambda m: loss(m, "saturation")))(model)
  assert not np.allclose(np.asarray(sat["conv"]["kernel"][...]),
                         np.asarray(grads["conv"]["kernel"][...]), atol=1e-3)


def test_bad_calibration_type():
  model, variables, x = _net()
  with pytest.raises(TypeError, match="HwCalibration"):
    rk.hwaware(model, LOSSY, {"Conv_0": 1.0}, variables=variables)(x)
