"""Whole-model emulation of Linen and NNX models."""

from flax import linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rsjax
from rsjax import kernels as rk

# Lossless ADC and fine quantization: the emulated model tracks the float one.
FINE = rsjax.HardwareSpec(weight_bits=12, input_bits=12, ou_cols=12,
                          adc_bits=5)
LOSSY = rsjax.HardwareSpec(adc_bits=4)


class LinenNet(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(4, (3, 3), strides=2)(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.relu(x)
    x = nn.Conv(4, (3, 3), padding="VALID", use_bias=False)(x)
    x = nn.relu(x).reshape(x.shape[0], -1)
    return nn.Dense(3)(x)


class NnxNet(nnx.Module):

  def __init__(self, rngs):
    self.conv = nnx.Conv(2, 4, (3, 3), strides=2, rngs=rngs)
    self.bn = nnx.BatchNorm(4, rngs=rngs)
    self.head = nnx.Linear(4 * 4 * 4, 3, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn(self.conv(x)))
    return self.head(x.reshape(x.shape[0], -1))


def _batches():
  rng = np.random.default_rng(0)
  return [jnp.asarray(rng.standard_normal((4, 8, 8, 2)), jnp.float32)
          for _ in range(2)]


def _linen():
  model = LinenNet()
  batches = _batches()
  variables = model.init(jax.random.key(0), batches[0])
  # Non-trivial BatchNorm statistics, so that folding matters.
  stats = jax.tree.map(lambda a: a + 0.3, variables["batch_stats"])
  params = jax.tree.map(lambda a: a * 1.5, variables["params"])
  return model, {"params": params, "batch_stats": stats}, batches


def test_linen_emulation_tracks_float_and_folds_bn():
  model, variables, batches = _linen()
  layers = rk.program(rk.calibrate(model, batches, variables=variables,
                                   train=False), FINE)
  assert sorted(layers) == ["Conv_0", "Conv_1", "Dense_0"]
  assert layers["Conv_0"].folded == "BatchNorm_0"
  assert layers["Conv_0"].signed and not layers["Conv_1"].signed
  want = model.apply(variables, batches[0], train=False)
  got = jax.jit(lambda x: rk.emulate(model, layers, variables=variables)(
      x, train=False))(batches[0])
  err = float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))
  assert err < 2e-2, err


def test_linen_rules_and_lossy_adc():
  model, variables, batches = _linen()
  layers = rk.program(rk.calibrate(model, batches, variables=variables,
                                   rules=r"Conv_1", train=False), LOSSY)
  assert list(layers) == ["Conv_1"]
  assert layers["Conv_1"].weights.dataflow == "table"
  y = rk.emulate(model, layers, variables=variables)(batches[0], train=False)
  assert y.shape == (4, 3) and bool(jnp.all(jnp.isfinite(y)))


def test_linen_noise_vmap_over_keys():
  model, variables, batches = _linen()
  layers = rk.program(rk.calibrate(model, batches[:1], variables=variables,
                                   rules="Dense", train=False),
                      LOSSY,
                      device=rk.Device(read=rk.ReadNoise(0.5, per="sum")))
  run = lambda k: rk.emulate(model, layers, variables=variables, key=k)(
      batches[0], train=False)
  keys = jax.random.split(jax.random.key(1), 3)
  ys = jax.jit(jax.vmap(run))(keys)
  assert ys.shape == (3, 4, 3)
  assert not np.allclose(np.asarray(ys[0]), np.asarray(ys[1]))
  np.testing.assert_array_equal(np.asarray(ys[2]), np.asarray(run(keys[2])))


def test_nnx_emulation_tracks_float():
  model = NnxNet(nnx.Rngs(0))
  model.bn.mean[...] = model.bn.mean[...] + 0.2
  model.bn.var[...] = model.bn.var[...] * 2.0
  model.eval()
  batches = _batches()
  layers = rk.program(rk.calibrate(model, batches), FINE)
  assert sorted(layers) == ["conv", "head"]
  assert layers["conv"].folded == "bn"
  emulated = rk.emulate(model, layers)
  want = model(batches[0])
  got = nnx.jit(lambda m, x: m(x))(emulated, batches[0])
  err = float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))
  assert err < 2e-2, err
  # The original model is untouched.
  assert isinstance(model.conv, nnx.Conv)


def test_linen_calibrated_adc_per_column_weights():
  model, variables, batches = _linen()
  hw = LOSSY.replace(adc_mode="calibrated")
  layers = rk.program(rk.calibrate(model, batches, variables=variables,
                                   train=False), hw, per="column")
  for layer in layers.values():
    assert hw.adc_max <= int(layer.weights.adc_range) <= hw.partial_sum_max
    assert layer.w_scale.shape == (layer.weights.out_features,)
  want = model.apply(variables, batches[0], train=False)
  got = rk.emulate(model, layers, variables=variables)(batches[0], train=False)
  err = float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))
  assert err < 0.1, err


def test_nnx_noise_keys():
  model = NnxNet(nnx.Rngs(0))
  model.eval()
  batches = _batches()
  layers = rk.program(rk.calibrate(model, batches[:1], rules="conv"), LOSSY,
                      device=rk.Device(programming=rk.Programming(0.05),
                                       read=rk.ReadNoise(0.5, per="sum")),
                      key=jax.random.key(0))
  assert list(layers) == ["conv"]
  assert layers["conv"].weights.dataflow == "direct"
  a = rk.emulate(model, layers, key=jax.random.key(1))
  b = rk.emulate(model, layers, key=jax.random.key(2))
  np.testing.assert_array_equal(np.asarray(a(batches[0])),
                                np.asarray(a(batches[0])))
  assert not np.allclose(np.asarray(a(batches[0])), np.asarray(b(batches[0])))


def _random_shared_layer(shape, hw, rng):
  """A conv kernel of ``shape`` shared down to one random block per
  row-block (index 0) or pruned (-1)."""
  bh, bw = hw.block_shape
  rows = int(np.prod(shape[:-1]))
  nrb, ngr = -(-rows // bh), -(-shape[-1] // bw)
  return rsjax.CompressedLayer(
      jnp.asarray(rng.standard_normal((nrb, 1, bh, bw)), jnp.float32),
      jnp.asarray(rng.integers(-1, 1, (nrb, ngr)), jnp.int32), shape)


def test_linen_compressed_layer_equals_decompressed_dense():
  model, variables, batches = _linen()
  rng = np.random.default_rng(3)
  hw = LOSSY
  layer = _random_shared_layer(
      variables["params"]["Conv_1"]["kernel"].shape, hw, rng)
  dense_vars = jax.tree.map(lambda a: a, variables)
  dense_vars["params"]["Conv_1"]["kernel"] = layer.to_kernel()
  # Calibrate on the compressed model's float weights in both cases.
  shared = rk.program(rk.calibrate(model, batches, variables=dense_vars,
                                   train=False),
                      hw, compressed={"params/Conv_1/kernel": layer})
  dense = rk.program(rk.calibrate(model, batches, variables=dense_vars,
                                  train=False), hw)
  assert shared["Conv_1"].weights.route is None  # routed into the table
  assert shared["Conv_1"].folded is None
  np.testing.assert_array_equal(
      np.asarray(shared["Conv_1"].weights.table),
      np.asarray(dense["Conv_1"].weights.table))
  y_shared = rk.emulate(model, shared, variables=dense_vars)(
      batches[0], train=False)
  y_dense = rk.emulate(model, dense, variables=dense_vars)(
      batches[0], train=False)
  np.testing.assert_allclose(np.asarray(y_shared), np.asarray(y_dense),
                             rtol=1e-5, atol=1e-5)


def test_linen_compressed_layer_before_batchnorm_dense_layout():
  """index_and_add=False: the same numbers as index-and-add (BatchNorm kept
  digital, codebook quantization), only the dataflow differs; folding BN
  into the decompressed kernel instead would be another model."""
  model, variables, batches = _linen()
  rng = np.random.default_rng(4)
  hw = LOSSY  # a lossy ADC: the dataflows must agree conversion by conversion
  layer = _random_shared_layer(
      variables["params"]["Conv_0"]["kernel"].shape, hw, rng)
  variables = jax.tree.map(lambda a: a, variables)
  variables["params"]["Conv_0"]["kernel"] = layer.to_kernel()
  # Per-channel BatchNorm statistics: folding them is not a uniform scale
  # (which would quantize to the same integers).
  variables["batch_stats"] = jax.tree.map(
      lambda a: jnp.asarray(rng.uniform(0.3, 3.0, a.shape), a.dtype),
      variables["batch_stats"])
  compressed = {"params/Conv_0/kernel": layer}
  shared = rk.program(rk.calibrate(model, batches, variables=variables,
                                   train=False), hw, compressed=compressed)
  dense = rk.program(rk.calibrate(model, batches, variables=variables,
                                  train=False),
                     hw, compressed=compressed, index_and_add=False)
  folded = rk.program(rk.calibrate(model, batches, variables=variables,
                                   train=False), hw)
  assert shared["Conv_0"].folded is None and dense["Conv_0"].folded is None
  assert folded["Conv_0"].folded is not None
  run = lambda layers: np.asarray(rk.emulate(
      model, layers, variables=variables)(batches[0], train=False))
  np.testing.assert_array_equal(run(shared), run(dense))
  # The direct dataflow keeps the index table as a route: index-and-add in
  # one, a dense matrix in the other, the same outputs.
  calib = rk.calibrate(model, batches, variables=variables, train=False)
  direct = {name: rk.program(calib, hw, compressed=compressed,
                             dataflow="direct", index_and_add=flag)
            for name, flag in (("shared", True), ("dense", False))}
  assert direct["shared"]["Conv_0"].weights.route is not None
  assert direct["dense"]["Conv_0"].weights.route is None
  np.testing.assert_array_equal(run(direct["shared"]), run(direct["dense"]))
  np.testing.assert_array_equal(run(direct["shared"]), run(shared))
  gap = np.max(np.abs(run(shared) - run(folded)))
  assert gap > 1e-3 * np.max(np.abs(run(shared))), gap
  # The dense layout maps onto other OU shapes too (index-and-add cannot).
  other = rk.program(rk.calibrate(model, batches, variables=variables,
                                  train=False),
                     FINE, compressed=compressed, index_and_add=False)
  want = model.apply(variables, batches[0], train=False)
  err = float(jnp.max(jnp.abs(run(other) - want)) / jnp.max(jnp.abs(want)))
  assert err < 2e-2, err


def test_linen_twos_complement_first_layer():
  model, variables, batches = _linen()
  layers = rk.program(rk.calibrate(model, batches, variables=variables,
                                   train=False),
                      FINE, signed_scheme="twos_complement")
  assert layers["Conv_0"].signed
  assert layers["Conv_0"].signed_scheme == "twos_complement"
  want = model.apply(variables, batches[0], train=False)
  got = rk.emulate(model, layers, variables=variables)(batches[0], train=False)
  err = float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))
  assert err < 2e-2, err


def test_calibrate_once_program_many_equals_prepare():
  # One calibration programmed on two hardware specs (and with faults) gives
  # the very layers prepare_* makes from scratch, for Linen and NNX.
  model, variables, batches = _linen()
  calib = rk.calibrate(model, batches, variables=variables, train=False)
  assert sorted(calib.layers) == ["Conv_0", "Conv_1", "Dense_0"]
  faults = dict(device=rk.Device(programming=rk.Programming(0.1)),
                key=jax.random.key(3))
  for hw, kw in ((LOSSY, {}), (FINE, {}), (LOSSY, faults)):
    want = rk.program(rk.calibrate(model, batches, variables=variables,
                                   train=False), hw, **kw)
    got = rk.program(calib, hw, **kw)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  nnx_model = NnxNet(nnx.Rngs(0))
  nnx_model.eval()
  calib = rk.calibrate(nnx_model, _batches())
  want = rk.program(rk.calibrate(nnx_model, _batches()), LOSSY)
  got = rk.program(calib, LOSSY)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(TypeError, match="Calibration"):
    rk.program({"Conv_0": {}}, LOSSY)


def test_calibration_keeps_a_copy_of_the_first_rows():
  # The calibrated ADC range needs only the first rows of the first batch:
  # the calibration keeps a copy of those (not the caller's buffer, which
  # may be reused) and programs the same layers as a fresh calibration.
  model, variables, _ = _linen()
  rng = np.random.default_rng(1)
  batch = rng.standard_normal((300, 8, 8, 2)).astype(np.float32)
  hw = LOSSY.replace(adc_mode="calibrated")
  want = rk.program(rk.calibrate(model, [batch], variables=variables,
                                 train=False), hw)
  calib = rk.calibrate(model, [batch], variables=variables, train=False)
  batch[:] = 0.0
  assert calib.layers["Conv_0"]["sample"].shape[0] == 256
  got = rk.program(calib, hw)
  for name in want:
    assert int(got[name].weights.adc_range) == int(want[name].weights.adc_range)
    np.testing.assert_array_equal(np.asarray(got[name].x_scale),
                                  np.asarray(want[name].x_scale))


def test_bad_programming_option():
  model, variables, batches = _linen()
  calib = rk.calibrate(model, batches[:1], variables=variables, train=False)
  for option, match in ((dict(dataflow="fast"), "dataflow"),
                        (dict(per="row"), "per"),
                        (dict(signed_scheme="sign"), "signed_scheme")):
    with pytest.raises(ValueError, match=match):
      rk.program(calib, LOSSY, **option)
  with pytest.raises(TypeError, match="rule"):
    rk.program(calib, LOSSY, rule="conv")
