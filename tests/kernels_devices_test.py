"""Real-array models: devices, wires (IR drop) and non-linear ADCs."""

import math
import re

from hypothesis import given, settings, strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rsjax
from rsjax import kernels as rk
from rsjax.kernels import cells as cells_lib
from rsjax.kernels import wires as wires_lib

import kernels_physics_reference as ref

HW = rsjax.HardwareSpec(adc_bits=4)
# 9-row OUs of 2-bit cells: p_max 27, a 5-bit clip ADC is lossless.
HW5 = rsjax.HardwareSpec(adc_bits=5)


def _data(seed=0, m=5, k=20, n=6, hw=HW):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 2**hw.input_bits, (m, k)),
          rng.integers(-hw.max_weight, hw.max_weight + 1, (k, n)))


def _eq(a, b):
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --- programming error in levels, stuck-at faults, read noise on sums ------


def _programmed(levels, device, key):
  """The documented programming of ``device``'s ``Programming`` (normal,
  levels) and ``StuckAt``: ``max(v + sigma e, 0)`` with ``e`` from the
  first of two keys split from ``key``; a cell stuck at 0 where ``u < p0``
  and at the top level where ``p0 <= u < p0 + p1``, ``u`` uniform from the
  second key, without programming error; rounded to the conductance grid."""
  k_var, k_fault = jax.random.split(key)
  g = np.asarray(levels, np.float32)
  if device.programming is not None:
    e = np.asarray(jax.random.normal(k_var, g.shape, jnp.float32))
    g = np.maximum(g + np.float32(device.programming.sigma) * e,
                   np.float32(0))
  if device.faults is not None:
    p0, p1 = device.faults.p0, device.faults.p1
    u = np.asarray(jax.random.uniform(k_fault, g.shape, jnp.float32))
    g = np.where(u < np.float32(p0), np.float32(0), g)
    g = np.where((u >= np.float32(p0)) & (u < np.float32(p0) + np.float32(p1)),
                 np.float32(2**HW.cell_bits - 1), g)
  step = np.float32(cells_lib.conductance_step(HW))
  return np.round(g / step) * step


@pytest.mark.parametrize("device,dataflow", [
    (rk.Device(programming=rk.Programming(0.3)), d)
    for d in ("table", "streamed", "direct")] + [
    (rk.Device(faults=rk.StuckAt(0.05, 0.05)), "table"),
    # Read noise runs the direct dataflow only.
    (rk.Device(programming=rk.Programming(0.2), faults=rk.StuckAt(0.02),
               read=rk.ReadNoise(0.4, per="sum")), "direct"),
])
def test_device_programs_the_documented_formula(device, dataflow):
  # crossbar_matmul programs with the first of two keys split from its key
  # and reads with the second; every dataflow reads the same cells.
  x, w = _data()
  key = jax.random.key(7)
  k_prog, k_read = jax.random.split(key)
  got = rk.crossbar_matmul(x, w, HW, key=key, device=device,
                           dataflow=dataflow)
  direct = rk.prepare(w, HW, device=device, key=k_prog, dataflow="direct")
  _eq(got, rk.apply(direct, x, key=k_read))
  ideal = rk.prepare(w, HW, dataflow="direct")
  assert not np.array_equal(np.asarray(got), np.asarray(rk.apply(ideal, x)))
  # The jitted programming may fuse v + sigma e into one rounding, so a
  # cell can land one grid step from the op-by-op formula.
  step = cells_lib.conductance_step(HW)
  np.testing.assert_allclose(np.asarray(direct.cells),
                             _programmed(ideal.cells, device, k_prog),
                             rtol=0, atol=step)


def test_program_is_the_documented_formula():
  levels = jnp.arange(4 * 50, dtype=jnp.int32).reshape(50, 4) % 4
  key = jax.random.key(3)
  for device in (rk.Device(programming=rk.Programming(0.25)),
                 rk.Device(programming=rk.Programming(0.25),
                           faults=rk.StuckAt(0.1, 0.2))):
    _eq(cells_lib.program(levels, HW, device, key),
        _programmed(levels, device, key))


# --- the ideal limits are today's results, bit for bit --------------------


@pytest.mark.parametrize("dataflow", ["table", "streamed", "direct"])
@pytest.mark.parametrize("models", [
    dict(wires=rk.Wires()),                                   # Rp = 0
    dict(device=rk.Device(on_off_ratio=math.inf)),
    dict(device=rk.Device(on_off_ratio=10.0)),                # Gmin referenced
    dict(device=rk.Device(drift=rk.Drift(t=1.0, t0=1.0, nu_max=0.1))),
    dict(adc=rk.NonlinearADC()),
    dict(device=rk.Device(on_off_ratio=20.0), wires=rk.Wires(),
         adc=rk.NonlinearADC(inl=(0.0,) * 15)),
])
def test_ideal_limits_equal_ideal(models, dataflow):
  x, w = _data(1)
  ideal = rk.crossbar_matmul(x, w, HW, dataflow=dataflow)
  got = rk.crossbar_matmul(x, w, HW, key=jax.random.key(0), dataflow=dataflow,
                           **models)
  _eq(got, ideal)


def test_ideal_models_keep_the_exact_dataflow():
  x, w = _data(2, hw=HW5)
  weights = rk.prepare(w, HW5, device=rk.Device(), wires=rk.Wires())
  assert weights.dataflow == "exact"
  weights = rk.prepare(w, HW5, wires=rk.Wires(r_row=1e-4, r_col=1e-4))
  assert weights.dataflow == "table"  # lossless ADC, lossy wires


# --- IR drop ----------------------------------------------------------------


@pytest.mark.parametrize("shape,wires", [
    ((3, 4), (1e-2, 2e-2, 0.0, 0.0)),
    ((9, 8), (1e-3, 1e-3, 5e-3, 1e-2)),
    ((5, 2), (5e-2, 1e-3, 0.0, 0.1)),
])
def test_transfer_matches_nodal_analysis(shape, wires):
  rng = np.random.default_rng(sum(shape))
  g = rng.uniform(0.02, 1.0, (2,) + shape)
  r_row, r_col, r_rt, r_ct = wires
  hw = rsjax.HardwareSpec(ou_rows=shape[0], ou_cols=8, xbar_rows=64)
  t = np.asarray(wires_lib.transfer(
      jnp.asarray(g, jnp.float32),
      rk.Wires(r_row, r_col, r_rt, r_ct, placement=False), hw))
  for b in range(2):
    v = rng.uniform(0, 1, shape[0])
    want = ref.nodal_column_currents(g[b], v, r_row, r_col, r_rt, r_ct)
    np.testing.assert_allclose(v @ t[b], want, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("rows,fall", [(9, 0.67), (16, 1.28), (32, 3.76)])
def test_ir_drop_grows_with_the_ou_height(rows, fall):
  # Every cell on (Gmax), every row driven, segments of 1e-4 Rmin: the
  # worst column current's fall, by the nodal reference.
  hw = rsjax.HardwareSpec(ou_rows=rows, xbar_rows=128)
  g = np.ones((rows, 8))
  want = ref.nodal_column_currents(g, np.ones(rows), 1e-4, 1e-4)
  t = wires_lib.transfer(jnp.ones((1, rows, 8), jnp.float32),
                         rk.Wires(1e-4, 1e-4, placement=False), hw)
  col = np.asarray(t[0]).sum(axis=0)
  np.testing.assert_allclose(col, want, rtol=1e-5)
  assert round(100 * (1 - col.min() / rows), 2) == pytest.approx(fall,
                                                                 abs=0.01)


def test_placement_adds_the_crossed_wire():
  hw = rsjax.HardwareSpec(xbar_rows=36, xbar_cols=32)  # 4 row-blocks, 4 groups
  g = jnp.full((1, 9, 8), 0.7, jnp.float32)
  wires = rk.Wires(1e-3, 2e-3, 1e-2, 3e-2)
  placed = wires_lib.transfer(g, wires, hw, row_slots=jnp.array([1]),
                              col_slots=jnp.array([2]))
  # Slot 1 of 4 has 2 row-blocks (18 rows) below it; group 2 has 16 cell
  # columns to its left.
  alone = wires_lib.transfer(
      g, rk.Wires(1e-3, 2e-3, 1e-2 + 16 * 1e-3, 3e-2 + 18 * 2e-3,
                  placement=False), hw)
  np.testing.assert_allclose(np.asarray(placed), np.asarray(alone),
                             rtol=1e-6)


@pytest.mark.parametrize("signed", ["offset", "differential"])
@pytest.mark.parametrize("jit", [False, True])
def test_crossbar_with_ir_drop_matches_the_nodal_reference(signed, jit):
  hw = rsjax.HardwareSpec(adc_bits=4, signed=signed, xbar_rows=36,
                          xbar_cols=16)
  x, w = _data(3, m=3, k=15, n=5, hw=hw)
  w[9:, 2:4] = 0  # a pruned block: never activated
  device = rk.Device(on_off_ratio=25.0)
  wires = rk.Wires(2e-3, 3e-3, 1e-2, 2e-2)
  f = lambda x, w: rk.crossbar_matmul(x, w, hw, device=device, wires=wires,
                                      dataflow="table")
  got = np.asarray((jax.jit(f) if jit else f)(x, w), np.float64)
  want = ref.physical_crossbar(x, w, hw, g0=3.0 / 24.0,
                               wires=(2e-3, 3e-3, 1e-2, 2e-2))
  # float32 solves against float64: a sum within rounding of a threshold
  # may convert one code apart.
  assert np.mean(got == want) >= 0.99
  assert np.max(np.abs(got - want)) <= 2.0**(hw.cell_bits * (hw.slices - 1)
                                             + hw.cycles)
  # The IR drop is visible at this resistance.
  assert not np.array_equal(got, np.asarray(rk.crossbar_matmul(x, w, hw)))


@pytest.mark.parametrize("models", [
    dict(wires=rk.Wires(1e-3, 1e-3, 1e-2, 1e-2), device=rk.Device(20.0)),
    dict(device=rk.Device(10.0, iv=rk.SinhIV(0.6))),
    dict(adc=rk.NonlinearADC.from_dnl(np.linspace(-0.4, 0.4, 14), 0.2)),
    dict(device=rk.Device(15.0, programming=rk.WanRRAM2022(),
                          drift=rk.Drift(t=3600.0, nu_min=0.02, nu_max=0.06,
                                         nu_std=0.01, compensate=True)),
         wires=rk.Wires(5e-4, 5e-4)),
])
def test_table_streamed_direct_agree(models):
  x, w = _data(4, m=7, k=22, n=9)
  key = jax.random.key(11)
  outs = [rk.crossbar_matmul(x, w, HW, key=key, dataflow=d, **models)
          for d in ("table", "streamed", "direct")]
  _eq(outs[0], outs[1])
  _eq(outs[0], outs[2])
  ideal = rk.crossbar_matmul(x, w, HW)
  assert not np.array_equal(np.asarray(outs[0]), np.asarray(ideal))


def test_shared_layer_index_and_add_equals_dense_with_wires():
  hw = rsjax.HardwareSpec(adc_bits=4, xbar_cols=16)
  rng = np.random.default_rng(5)
  codebook = rng.integers(-127, 128, (3, 2, 9, 2))
  index = np.array([[0, 1, -1, 0], [1, 1, 0, -1], [0, -1, 1, 1]])
  x = rng.integers(0, 256, (4, 27))
  models = dict(device=rk.Device(30.0), wires=rk.Wires(1e-3, 1e-3))
  shared = rk.shared_crossbar_matmul(x, codebook, index, hw, **models)
  assert not np.array_equal(np.asarray(shared), np.asarray(
      rk.shared_crossbar_matmul(x, codebook, index, hw)))
  # A stored block's IR drop depends on where it is stored: the reference is
  # the nodal analysis of the packed crossbar, block by block.
  blocks = np.asarray(codebook)
  want = np.zeros((4, 8))
  for r in range(3):
    packed = np.concatenate([blocks[r, k] for k in range(2)], axis=1)
    y = ref.physical_crossbar(x[:, r * 9:(r + 1) * 9], packed, hw,
                              g0=3.0 / 29.0, wires=(1e-3, 1e-3, 0.0, 0.0),
                              row_block_offset=r)
    for gi in range(4):
      if index[r, gi] >= 0:
        k = index[r, gi]
        want[:, gi * 2:(gi + 1) * 2] += y[:, k * 2:(k + 1) * 2]
  got = np.asarray(shared, np.float64)
  assert np.mean(got == want) >= 0.99


# --- devices ----------------------------------------------------------------


def test_wan_fit_gives_its_sigma():
  device = rk.Device(on_off_ratio=20.0, programming=rk.WanRRAM2022(30.0))
  hw = rsjax.HardwareSpec()
  levels = jnp.full((40000,), 2, jnp.int32)
  g, _ = device.program(levels, hw, jax.random.key(0))
  g0 = device.g0(hw)
  us_per_level = 30.0 / (3 + g0)
  g_us = (np.asarray(g, np.float64) + g0) * us_per_level
  target = (2 + g0) * us_per_level
  a, b, c, d = rk.WanRRAM2022.COEFFS
  sigma = a * target**3 + b * target**2 + c * target + d
  assert np.std(g_us) == pytest.approx(sigma, rel=0.03)
  assert np.mean(g_us) == pytest.approx(target, abs=3 * sigma / 200)


@pytest.mark.parametrize("form,expect", [
    ("independent", lambda g, top: 0.1 * np.ones_like(g)),
    ("proportional", lambda g, top: 0.1 * g),
    ("inverse", lambda g, top: 0.1 * top / g),
])
def test_programming_forms(form, expect):
  device = rk.Device(on_off_ratio=7.0,
                     programming=rk.Programming(0.1, form, "uniform"))
  hw = rsjax.HardwareSpec()
  g0 = device.g0(hw)  # 0.5 levels
  for level in (1, 3):
    levels = jnp.full((40000,), level, jnp.int32)
    g, _ = device.program(levels, hw, jax.random.key(level))
    g = np.asarray(g, np.float64)
    want = expect(np.float64(level + g0), 3 + g0)
    assert np.std(g) == pytest.approx(float(want), rel=0.03)
    assert np.max(np.abs(g - level)) <= math.sqrt(3) * float(want) * 1.001


def test_drift_follows_the_power_law_and_compensation():
  hw = rsjax.HardwareSpec()
  drift = rk.Drift(t=1e4, t0=10.0, nu_min=0.1, nu_max=0.02)
  device = rk.Device(on_off_ratio=4.0, drift=drift)
  levels = jnp.arange(4, dtype=jnp.int32)
  g, comp = device.program(levels, hw, jax.random.key(0))
  g0 = 1.0
  g_abs = np.arange(4) + g0
  nu = 0.1 + (0.02 - 0.1) * g_abs / 4.0
  np.testing.assert_allclose(np.asarray(g), g_abs * 1e3**-nu - g0, rtol=1e-5)
  assert float(comp) == 1.0
  _, comp = rk.Device(4.0, drift=drift.__class__(
      **{**drift.__dict__, "compensate": True})).program(
          levels, hw, jax.random.key(0))
  np.testing.assert_allclose(float(comp) * np.sum(np.asarray(g)), 6.0,
                             rtol=1e-5)


def test_drift_compensation_restores_accuracy():
  x, w = _data(6, m=16, k=36, n=8, hw=HW5)
  drift = dict(t=3.15e7, nu_min=0.03, nu_max=0.03)
  ideal = np.asarray(rk.crossbar_matmul(x, w, HW5))
  errs = []
  for compensate in (False, True):
    device = rk.Device(drift=rk.Drift(**drift, compensate=compensate))
    y = np.asarray(rk.crossbar_matmul(x, w, HW5, key=jax.random.key(0),
                                      device=device))
    errs.append(np.mean(np.abs(y - ideal)))
  assert errs[1] < 0.2 * errs[0]


def test_sinh_iv_is_a_gain_on_absolute_conductance():
  x, w = _data(7, m=4, k=18, n=4)
  device = rk.Device(on_off_ratio=10.0, iv=rk.SinhIV(0.8))
  got = np.asarray(rk.crossbar_matmul(x, w, HW, device=device,
                                      dataflow="table"), np.float64)
  gain = math.sinh(0.8) / 0.8
  g0 = 3.0 / 9.0
  want = ref.physical_crossbar(x, w, HW, g0=g0, iv_gain=gain)
  assert np.mean(got == want) >= 0.99


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), sigma=st.floats(0.02, 0.2))
def test_read_noise_is_zero_mean(seed, sigma):
  # A lossless unit-LSB ADC rounds p + noise; level-0 cells carry none
  # (proportional noise, infinite on/off ratio), so no sum clips at 0 and
  # the outputs' mean over reads is the noiseless output.
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 256, (2, 9))
  w = rng.integers(-127, 128, (9, 2))
  device = rk.Device(read=rk.ReadNoise(sigma, "proportional"))
  weights = rk.prepare(w, HW5, device=device)
  assert weights.dataflow == "direct"
  ideal = np.asarray(rk.crossbar_matmul(x, w, HW5), np.float64)
  keys = jax.random.split(jax.random.key(seed), 256)
  ys = np.asarray(jax.vmap(lambda k: rk.apply(weights, x, key=k))(keys),
                  np.float64)
  assert np.std(ys) > 0
  se = np.std(ys, axis=0) / np.sqrt(len(keys)) + 1e-9
  assert np.all(np.abs(np.mean(ys, axis=0) - ideal) <= 5 * se + 1e-6)


def test_read_noise_is_fresh_per_read_and_needs_a_key():
  x, w = _data(8)
  weights = rk.prepare(w, HW, device=rk.Device(read=rk.ReadNoise(0.2)))
  a = rk.apply(weights, x, key=jax.random.key(1))
  b = rk.apply(weights, x, key=jax.random.key(2))
  assert not np.array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match="key"):
    rk.apply(weights, x)


def test_nonlinear_adc_matches_reference_thresholds():
  adc = rk.NonlinearADC.from_dnl(
      np.random.default_rng(0).normal(0, 0.3, 14), offset=-0.1)
  x, w = _data(9, m=4, k=18, n=4)
  got = np.asarray(rk.crossbar_matmul(x, w, HW, adc=adc), np.float64)
  want = ref.physical_crossbar(x, w, HW, g0=0.0,
                               thresholds=np.asarray(adc.thresholds(HW)))
  _eq(got, want)


def test_nonlinear_adc_random_is_keyed():
  a = rk.NonlinearADC.random(jax.random.key(0), HW, dnl_sigma=0.2)
  b = rk.NonlinearADC.random(jax.random.key(0), HW, dnl_sigma=0.2)
  assert a == b and len(a.inl) == HW.adc_max
  assert a != rk.NonlinearADC.random(jax.random.key(1), HW, dnl_sigma=0.2)


def test_models_vmap_over_keys():
  x, w = _data(10)
  device = rk.Device(20.0, programming=rk.Programming(0.1, "proportional"))
  f = lambda k: rk.crossbar_matmul(x, w, HW, key=k, device=device,
                                   wires=rk.Wires(1e-3, 1e-3))
  keys = jax.random.split(jax.random.key(0), 3)
  batch = jax.jit(jax.vmap(f))(keys)
  for i in range(3):
    _eq(batch[i], f(keys[i]))


# --- bad input ---------------------------------------------------------------


@pytest.mark.parametrize("make,field", [
    (lambda: rk.Wires(r_row=-1e-3), "Wires.r_row"),
    (lambda: rk.Wires(r_col_terminal=float("inf")), "Wires.r_col_terminal"),
    (lambda: rk.Device(on_off_ratio=1.0), "Device.on_off_ratio"),
    (lambda: rk.Device(on_off_ratio=0.5), "Device.on_off_ratio"),
    (lambda: rk.Drift(t=-1.0), "Drift.t"),
    (lambda: rk.Drift(t0=0.0), "Drift.t0"),
    (lambda: rk.Drift(nu_std=-0.1), "Drift.nu_std"),
    (lambda: rk.Device(programming="wan"), "Device.programming"),
    (lambda: rk.Device(read=rk.Programming(0.1)), "Device.read"),
    (lambda: rk.Programming(0.1, form="quadratic"), "Programming.form"),
    (lambda: rk.ReadNoise(-0.1), "ReadNoise.sigma"),
    (lambda: rk.Programming(-0.1), "Programming.sigma must be >= 0"),
    (lambda: rk.Programming("0.1"), "Programming.sigma must be a number"),
    (lambda: rk.Programming(True), "Programming.sigma must be a number"),
    (lambda: rk.StuckAt(-0.01), "StuckAt.p0 must be >= 0"),
    (lambda: rk.StuckAt(0.0, -0.01), "StuckAt.p1 must be >= 0"),
    (lambda: rk.StuckAt(0.7, 0.6), "StuckAt.p0 + p1 must be <= 1"),
    (lambda: rk.SinhIV(0.0), "SinhIV.k"),
    (lambda: rk.WanRRAM2022(50.0), "WanRRAM2022.g_max_us"),
    (lambda: rk.NonlinearADC(inl=(0.0, -1.5)), "NonlinearADC.inl"),
])
def test_bad_models_name_the_field(make, field):
  with pytest.raises(ValueError, match=re.escape(field)):
    make()


def test_bad_combinations_are_errors():
  x, w = _data()
  with pytest.raises(ValueError, match="NonlinearADC.inl has 3 values"):
    rk.prepare(w, HW, adc=rk.NonlinearADC(inl=(0.0, 0.1, 0.2)))
  with pytest.raises(ValueError, match="wires must be a rsjax.kernels.Wires"):
    rk.prepare(w, HW, wires=1e-3)
  with pytest.raises(ValueError, match="device must be a rsjax.kernels.Device"):
    rk.prepare(w, HW, device="rram")
  # A model is one slot of a device, not a device.
  with pytest.raises(ValueError, match="Device, got Programming"):
    rk.prepare(w, HW, device=rk.Programming(0.1), key=jax.random.key(0))
  with pytest.raises(ValueError, match="I-V nonlinearity with wire"):
    rk.prepare(w, HW, device=rk.Device(iv=rk.SinhIV(0.5)),
               wires=rk.Wires(1e-3))
  with pytest.raises(ValueError, match="dac_bits=1"):
    rk.prepare(w, HW.replace(dac_bits=2), device=rk.Device(iv=rk.SinhIV()))
  with pytest.raises(ValueError, match="exact"):
    rk.prepare(w, HW5, wires=rk.Wires(1e-3), dataflow="exact")


# --- everywhere: whole models and hardware-aware training --------------------

from flax import nnx  # noqa: E402

# The small Linen and NNX CNNs of the hardware-aware tests.
from kernels_hwaware_test import Net as _Linen  # noqa: E402
from kernels_hwaware_test import NnxNet as _Nnx  # noqa: E402
from kernels_hwaware_test import _batch as _images  # noqa: E402

REAL = dict(device=rk.Device(20.0, programming=rk.WanRRAM2022(),
                             drift=rk.Drift(t=86400.0, nu_max=0.05,
                                            compensate=True)),
            wires=rk.Wires(1e-4, 1e-4),
            adc=rk.NonlinearADC.from_dnl(np.full(14, 0.1)))


def test_whole_linen_model_with_real_arrays():
  model, x = _Linen(), _images()
  variables = model.init(jax.random.key(0), x)
  ideal = rk.program(rk.calibrate(model, [x], variables=variables), HW)
  real = rk.program(rk.calibrate(model, [x], variables=variables), HW,
                    key=jax.random.key(1), **REAL)
  run = jax.jit(
      lambda layers: rk.emulate(model, layers, variables=variables)(x))
  y_ideal, y_real = run(ideal), run(real)
  assert y_real.shape == y_ideal.shape
  assert not np.allclose(np.asarray(y_real), np.asarray(y_ideal))
  # The same key programs the same arrays.
  again = rk.program(rk.calibrate(model, [x], variables=variables), HW,
                     key=jax.random.key(1), **REAL)
  _eq(run(again), y_real)


def test_whole_nnx_model_with_real_arrays():
  model, x = _Nnx(nnx.Rngs(0)), _images()
  calib = rk.calibrate(model, [x])
  ideal = rk.emulate(model, rk.program(calib, HW))(x)
  real = rk.emulate(model, rk.program(calib, HW, wires=rk.Wires(2e-3, 2e-3),
                                      device=rk.Device(10.0)))(x)
  assert not np.allclose(np.asarray(real), np.asarray(ideal))


def test_hwaware_draws_the_device_per_step():
  model, x = _Linen(), _images()
  variables = model.init(jax.random.key(0), x)
  calib = rk.calibrate_hwaware(model, [x], HW, variables=variables)
  fwd = jax.jit(lambda v, k: rk.hwaware(model, HW, calib, variables=v,
                                        key=k, **REAL)(x))
  y0, y0b, y1 = (fwd(variables, jax.random.key(s)) for s in (0, 0, 1))
  _eq(y0, y0b)
  assert not np.allclose(np.asarray(y0), np.asarray(y1))
  grads = jax.grad(lambda v: jnp.sum(fwd(v, jax.random.key(0))**2))(
      variables)
  assert float(jnp.sum(jnp.abs(grads["params"]["Conv_1"]["kernel"]))) > 0


def test_hwaware_nnx_with_real_arrays():
  model, x = _Nnx(nnx.Rngs(0)), _images()
  calib = rk.calibrate_hwaware(model, [x], HW)

  def loss(m, key):
    run = rk.hwaware(m, HW, calib, key=key, device=rk.Device(
        15.0, programming=rk.Programming(0.05, "proportional")),
                     wires=rk.Wires(1e-3, 1e-3))
    return jnp.sum(run(x) ** 2)

  grads = nnx.jit(nnx.grad(loss))(model, jax.random.key(0))
  assert float(jnp.sum(jnp.abs(grads["conv"]["kernel"][...]))) > 0
  assert float(loss(model, jax.random.key(0))) != float(
      loss(model, jax.random.key(1)))


# --- ADC range rules --------------------------------------------------------


@pytest.mark.parametrize("mode,rng,unit", [
    ("clip", 15, True), ("scale", 27, False), ("calibrated", 20, False)])
def test_adc_modes_are_objects(mode, rng, unit):
  from rsjax.kernels import adc as adc_lib  # pylint: disable=g-import-not-at-top
  hw = HW.replace(adc_mode=mode)
  rule = adc_lib.mode(hw)
  assert rule.name == mode and rule.unit_lsb == unit
  assert rule.calibrated == (mode == "calibrated")
  given = 20 if rule.calibrated else None
  assert int(adc_lib.resolve_range(hw, given)) == rng
  if not rule.calibrated:
    with pytest.raises(ValueError, match=f"not '{mode}'"):
      adc_lib.resolve_range(hw, 20)
  # A non-linear converter works on every range rule, the same on every
  # dataflow.
  x, w = _data(12)
  conv = rk.NonlinearADC.from_dnl(np.linspace(-0.3, 0.3, 14))
  outs = [rk.crossbar_matmul(x, w, hw, adc=conv, dataflow=d, adc_range=given)
          for d in ("table", "direct")]
  _eq(outs[0], outs[1])
  assert outs[0].dtype == (jnp.int32 if unit else jnp.float32)
