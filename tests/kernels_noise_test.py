"""Non-idealities, counters and ADC calibration of the crossbar emulator."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rsjax
from rsjax import kernels as rk
from rsjax.kernels import calibration as calibrate_lib
from rsjax.kernels import cells as cells_lib

HW = rsjax.HardwareSpec(adc_bits=4)


def _data(seed=0, m=6, k=20, n=5):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (m, k)),
          rng.integers(-127, 128, (k, n)))


@pytest.mark.parametrize("dataflow", ["table", "streamed", "direct"])
def test_zero_noise_equals_ideal(dataflow):
  x, w = _data()
  ideal = rk.crossbar_matmul(x, w, HW, dataflow=dataflow)
  # Every model present, each at zero.
  zero = rk.Device(programming=rk.Programming(0.0), faults=rk.StuckAt(),
                   read=rk.ReadNoise(0.0, per="sum"))
  noisy = rk.crossbar_matmul(x, w, HW, key=jax.random.key(0), device=zero,
                             dataflow=dataflow)
  np.testing.assert_array_equal(np.asarray(noisy), np.asarray(ideal))


def test_zero_read_noise_direct_equals_table():
  x, w = _data(1)
  table = rk.crossbar_matmul(x, w, HW, dataflow="table")
  direct = rk.crossbar_matmul(x, w, HW, dataflow="direct")
  np.testing.assert_array_equal(np.asarray(table), np.asarray(direct))


@pytest.mark.parametrize("device", [
    rk.Device(programming=rk.Programming(0.2)),
    rk.Device(faults=rk.StuckAt(0.05, 0.05)),
    rk.Device(read=rk.ReadNoise(0.5, per="sum")),
])
def test_noise_reproducible_by_key_and_vmappable(device):
  x, w = _data(2)
  f = lambda key: rk.crossbar_matmul(x, w, HW, key=key, device=device)
  a, b = f(jax.random.key(3)), f(jax.random.key(3))
  c = f(jax.random.key(4))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(np.asarray(a), np.asarray(c))
  keys = jax.random.split(jax.random.key(3), 3)
  batch = jax.jit(jax.vmap(f))(keys)
  assert batch.shape == (3,) + a.shape
  for i in range(3):
    np.testing.assert_array_equal(np.asarray(batch[i]),
                                  np.asarray(f(keys[i])))


def test_noise_needs_key():
  x, w = _data()
  with pytest.raises(ValueError, match="key"):
    rk.crossbar_matmul(x, w, HW,
                       device=rk.Device(read=rk.ReadNoise(1.0, per="sum")))
  with pytest.raises(ValueError, match="key"):
    rk.crossbar_matmul(x, w, HW,
                       device=rk.Device(programming=rk.Programming(1.0)))
  with pytest.raises(ValueError, match="ReadNoise.sigma must be >= 0"):
    rk.ReadNoise(-1.0, per="sum")


def test_fault_rates_within_bounds():
  n = 200_000
  levels = jnp.full((n,), 1, jnp.int32)
  device = rk.Device(faults=rk.StuckAt(0.02, 0.05))
  g = np.asarray(cells_lib.program(levels, HW, device, jax.random.key(5)))
  top = 2**HW.cell_bits - 1
  for rate, value in ((0.02, 0.0), (0.05, top)):
    observed = np.mean(g == value)
    bound = 5 * np.sqrt(rate * (1 - rate) / n)  # 5 sigma
    assert abs(observed - rate) < bound, (observed, rate)
  assert np.all((g == 0) | (g == top) | (g == 1))


def test_program_variation_statistics():
  n = 100_000
  levels = jnp.full((n,), 2, jnp.int32)
  device = rk.Device(programming=rk.Programming(0.1))
  g = np.asarray(cells_lib.program(levels, HW, device, jax.random.key(6)))
  assert abs(g.mean() - 2.0) < 5 * 0.1 / np.sqrt(n)
  assert abs(g.std() - 0.1) < 0.005


def test_read_noise_mean_close_to_ideal():
  hw = HW.replace(adc_bits=5)  # lossless: noise is the only error
  x, w = _data(7, m=4)
  ideal = np.asarray(rk.crossbar_matmul(x, w, hw, dataflow="direct"), float)
  device = rk.Device(read=rk.ReadNoise(0.3, per="sum"))
  keys = jax.random.split(jax.random.key(8), 16)
  runs = jax.vmap(lambda k: rk.crossbar_matmul(x, w, hw, key=k,
                                               device=device))(keys)
  runs = np.asarray(runs, float)
  assert not np.array_equal(runs[0], ideal)
  err = np.abs(runs.mean(0) - ideal) / np.abs(x @ np.abs(w)).max()
  assert err.max() < 0.05


def test_counters_dense_and_shared():
  hw = rsjax.HardwareSpec()
  index = np.array([[0, 1, 0, -1], [0, 0, 0, 0]], np.int32)
  c = rk.ou_counts(hw, index=index, positions=3)
  per = 3 * hw.cycles
  assert c["ou_activations_dense"] == 8 * per
  assert c["ou_activations_pruned"] == 7 * per
  assert c["ou_activations_shared"] == 3 * per
  assert c["adc_conversions_shared"] == 3 * per * hw.ou_cols
  d = rk.ou_counts(hw.replace(signed="differential", weight_bits=9),
                   (20, 7))
  # 3 row-blocks x 4 column groups of 2 weights, 2 arrays, 8 cycles.
  assert d["ou_activations_dense"] == 3 * 4 * 2 * 8


def test_counters_match_core_report():
  report = pytest.importorskip("rsjax._src.report")
  hw = rsjax.HardwareSpec()
  rng = np.random.default_rng(9)
  # A hand-made layer (3x3x4 -> 8): 4 row-blocks x 4 groups, 3 slots.
  index = jnp.asarray(rng.integers(-1, 3, (4, 4)), jnp.int32)
  codebook = jnp.asarray(rng.standard_normal((4, 3, 9, 2)), jnp.float32)
  layer = rsjax.CompressedLayer(codebook, index, (3, 3, 4, 8))
  fig = report.layer_report(layer, hw, positions=5)
  mine = rk.ou_counts(hw, index=layer.index, positions=5)
  for key, value in mine.items():
    assert fig[key] == value, key


def test_calibrated_range_from_data():
  hw = HW.replace(adc_mode="calibrated")
  x, w = _data(10, m=32, k=36, n=8)
  lo = rk.calibrate_adc_range(x, w, hw, method="quantile", quantile=0.5)
  hi = rk.calibrate_adc_range(x, w, hw, method="quantile", quantile=1.0)
  assert hw.adc_max <= lo <= hi <= hw.partial_sum_max
  y = rk.crossbar_matmul(x, w, hw, adc_range=hi)
  assert y.dtype == jnp.float32


def _mse_range_reference(x, w, hw):
  """The place-weighted least-squares ADC range, by enumerating in NumPy."""
  rows, bw = hw.ou_rows, hw.block_shape[1]
  k, n = w.shape
  kp = -(-k // rows) * rows
  xp = np.zeros((x.shape[0], kp), np.int64)
  xp[:, :k] = x
  u = np.zeros((kp, n), np.int64)
  u[:k] = w + 2 ** (hw.weight_bits - 1)  # offset mapping
  wpad = np.zeros((kp, n), np.int64)
  wpad[:k] = w
  ranges = range(hw.adc_max, max(hw.partial_sum_max, hw.adc_max) + 1)
  errors = np.zeros(len(ranges))
  for r0 in range(0, kp, rows):
    for c in range(n):
      g0 = c // bw * bw
      if not wpad[r0:r0 + rows, g0:g0 + bw].any():
        continue  # a zero block is never stored
      for s in range(hw.slices):
        level = (u[r0:r0 + rows, c] >> (s * hw.cell_bits)) & (
            2**hw.cell_bits - 1)
        for t in range(hw.cycles):
          bits = (xp[:, r0:r0 + rows] >> t) & 1
          p = bits @ level
          for i, rng in enumerate(ranges):
            code = np.minimum(np.floor(p * hw.adc_max / rng + 0.5),
                              hw.adc_max)
            err = code * rng / hw.adc_max - p
            errors[i] += 4.0 ** (t + s * hw.cell_bits) * np.sum(err**2)
  return ranges[int(np.argmin(errors))], errors


@pytest.mark.parametrize("adc_bits,seed", [(4, 0), (3, 1), (2, 2)])
def test_mse_range_matches_numpy(adc_bits, seed):
  hw = rsjax.HardwareSpec(adc_bits=adc_bits, adc_mode="calibrated")
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 256, (12, 22)) * (rng.random((12, 22)) < 0.6)
  w = rng.integers(-20, 21, (22, 6))
  w[9:18, 2:4] = 0  # one pruned block
  want, errors = _mse_range_reference(x, w, hw)
  assert len(set(errors)) > 1  # the choice is not a tie
  assert rk.calibrate_adc_range(x, w, hw) == want


@pytest.mark.parametrize("chunk_sums", [None, 24, 300])
def test_mse_range_matches_numpy_in_row_chunks(monkeypatch, chunk_sums):
  # 60 partial sums a row: 24 per call is one row at a time, 300 is five
  # (13 rows: the last chunk padded with two zero rows).
  if chunk_sums is not None:
    monkeypatch.setattr(calibrate_lib, "_CHUNK_SUMS", chunk_sums)
  hw = rsjax.HardwareSpec(adc_bits=3, adc_mode="calibrated")
  rng = np.random.default_rng(4)
  x = rng.integers(0, 256, (13, 20)) * (rng.random((13, 20)) < 0.5)
  w = rng.integers(-30, 31, (20, 5))
  want, _ = _mse_range_reference(x, w, hw)
  assert rk.calibrate_adc_range(x, w, hw) == want


def test_sample_rows_spread_over_a_conv_batch():
  # 128 images of 28x28 patches: rows in image-major, then row-major order.
  n, m = 128 * 784, 256
  idx = calibrate_lib.sample_rows(n, m)
  assert idx.shape == (m,) and np.all(np.diff(idx) > 0)
  assert idx[0] >= 0 and idx[-1] < n
  strata = idx * m // n
  np.testing.assert_array_equal(strata, np.arange(m))  # one per stratum
  image, pos = idx // 784, idx % 784
  assert len(set(image)) == 128
  # No aliasing with the image's width or height: rows and columns vary.
  assert len(set(pos // 28)) >= 20 and len(set(pos % 28)) >= 20
  np.testing.assert_array_equal(calibrate_lib.sample_rows(10, 256),
                                np.arange(10))
  # Strata of fractional width: still distinct rows, one in each.
  for n in (257, 300, 400, 511):
    idx = calibrate_lib.sample_rows(n, m)
    assert len(np.unique(idx)) == m and np.all(np.diff(idx) > 0)
    assert idx[-1] < n
    np.testing.assert_array_equal(
        [np.searchsorted(np.arange(m + 1) * n // m, j, side="right") - 1
         for j in idx], np.arange(m))
  with pytest.raises(ValueError, match="max_rows must be >= 1"):
    calibrate_lib.sample_rows(10, 0)


def test_range_uses_rows_from_the_whole_sample():
  # The first max_rows rows are silent (a conv batch's first image's
  # background): the range comes from the rows spread over the sample.
  hw = rsjax.HardwareSpec(adc_bits=3, adc_mode="calibrated")
  rng = np.random.default_rng(5)
  x = rng.integers(0, 256, (4096, 18))
  x[:256] = 0
  w = rng.integers(0, 128, (18, 8))
  got = rk.calibrate_adc_range(x, w, hw, max_rows=256)
  picked = x[calibrate_lib.sample_rows(4096, 256)]
  assert got == rk.calibrate_adc_range(picked, w, hw, max_rows=256)
  assert got > hw.adc_max
  assert rk.calibrate_adc_range(x[:256], w, hw) == hw.adc_max
  with pytest.raises(ValueError, match="x has no rows"):
    rk.calibrate_adc_range(x[:0], w, hw)


def test_mse_range_keeps_unit_step_for_small_sums():
  # Small weights (under the offset mapping a small negative one fills its
  # low slices) and a fifth of the inputs at full scale: the 0.999 quantile
  # of the sums is above adc_max, yet a coarser step would round every
  # small sum, which costs more than clipping the rare large ones.
  hw = rsjax.HardwareSpec(adc_bits=4, adc_mode="calibrated")
  rng = np.random.default_rng(3)
  x = rng.integers(0, 256, (64, 36)) * (rng.random((64, 36)) < 0.7)
  x = np.where(rng.random((64, 36)) < 0.2, 255, x)
  w = rng.integers(-3, 4, (36, 8))
  assert rk.calibrate_adc_range(x, w, hw) == hw.adc_max
  assert rk.calibrate_adc_range(x, w, hw, method="quantile") > hw.adc_max
  with pytest.raises(ValueError, match="method must be one of"):
    rk.calibrate_adc_range(x, w, hw, method="max")


@pytest.mark.parametrize("device", [
    rk.Device(programming=rk.Programming(0.3)),
    rk.Device(faults=rk.StuckAt(0.05, 0.05)),
])
def test_programming_faults_same_in_every_dataflow(device):
  # The cells are drawn once at programming; table, streamed and direct then
  # read the same faulty cells and, with conductances on a 2^-f grid, sum
  # them exactly in any order. At this size unrounded conductances gave 12
  # of 16,384 outputs one ADC code apart between direct and table.
  x, w = _data(5, m=64, k=1152, n=256)
  key = jax.random.key(6)
  outs = [np.asarray(rk.crossbar_matmul(x, w, HW, key=key, device=device,
                                        dataflow=m))
          for m in ("table", "streamed", "direct")]
  ideal = np.asarray(rk.crossbar_matmul(x, w, HW))
  assert not np.array_equal(outs[0], ideal)
  for out in outs[1:]:
    np.testing.assert_array_equal(out, outs[0])
  # The chunk-major direct path (shared layers, read noise) sums in another
  # order (a batched einsum): unrounded conductances made it differ here.
  direct = rk.prepare(w, HW, key=key, device=device, dataflow="direct")
  table = rk.prepare(w, HW, key=key, device=device, dataflow="table")
  xi = jnp.asarray(x, jnp.int32)
  rows = rk.dataflow.chunk_rows(HW, "direct", direct.num_row_blocks, 256)
  chunk_major = rk.dataflow.map_rows(
      lambda c, _: rk.dataflow.direct_apply(direct.cells, None, direct.active,
                                            c, HW, direct.adc_range, 0.0,
                                            None), xi, rows)
  np.testing.assert_array_equal(
      np.asarray(chunk_major),
      np.asarray(rk.dataflow.table_apply(table.table, xi, HW)))
  step = rk.cells.conductance_step(HW)
  g = np.asarray(direct.cells, np.float64)
  np.testing.assert_array_equal(g / step, np.round(g / step))
  # And vmapped over keys (a batch of fault seeds in one compiled call).
  keys = jax.random.split(key, 2)
  batch = {m: np.asarray(jax.jit(jax.vmap(
      lambda k, m=m: rk.crossbar_matmul(x, w, HW, key=k, device=device,
                                        dataflow=m)))(keys))
           for m in ("table", "streamed")}
  np.testing.assert_array_equal(batch["streamed"], batch["table"])


def test_device_numpy_numbers_become_python_floats():
  # A device is a static jit argument: equal models must hash equal.
  model = rk.Device(programming=rk.Programming(np.float32(0.25)),
                    faults=rk.StuckAt(np.int64(0), np.float64(0.5)),
                    read=rk.ReadNoise(np.float32(0.5), per="sum"))
  plain = rk.Device(programming=rk.Programming(0.25),
                    faults=rk.StuckAt(0.0, 0.5),
                    read=rk.ReadNoise(0.5, per="sum"))
  assert model == plain and hash(model) == hash(plain)
  assert type(model.programming.sigma) is float
  assert type(model.faults.p0) is float and type(model.faults.p1) is float
  assert type(model.read.sigma) is float
  with pytest.raises(ValueError, match="ReadNoise.sigma must be a number"):
    rk.ReadNoise("0.1", per="sum")
