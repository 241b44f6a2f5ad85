"""rsjax.kernels crossbar MVMs against the NumPy reference of docs/hardware.md."""

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rsjax
from rsjax import kernels as rk

import kernels_reference as ref

ISAAC = rsjax.HardwareSpec()
ISAAC_LOSSY = rsjax.HardwareSpec(adc_bits=4)


def _rand(rng, hw, m, k, n, zero_blocks=False):
  x = rng.integers(0, 2**hw.input_bits, (m, k))
  w = rng.integers(-hw.max_weight, hw.max_weight + 1, (k, n))
  if zero_blocks:
    w[: hw.ou_rows, : hw.block_shape[1]] = 0
  return x, w


def _check(y, x, w, hw, calibrated=None):
  want = ref.crossbar_output(x, w, hw, calibrated)
  if hw.adc_mode == "clip":
    assert y.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(y), want)
  else:
    assert y.dtype == jnp.float32
    # float32 output: exact codes times a rational step, rounded once.
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=1e-6,
                               atol=1e-6 * max(1.0, np.abs(want).max()))


@st.composite
def specs(draw):
  cell_bits = draw(st.integers(1, 4))
  signed = draw(st.sampled_from(["offset", "differential"]))
  # Any weight_bits: cells wider than a stored weight are one slice.
  weight_bits = draw(st.integers(2, 8))
  stored = weight_bits - (signed == "differential")
  slices = -(-stored // cell_bits)
  input_bits = draw(st.integers(1, 8))
  dac_bits = draw(st.integers(1, min(2, input_bits)))
  ou_rows = draw(st.sampled_from([1, 3, 4, 9]) if dac_bits == 1
                 else st.sampled_from([1, 3, 4]))
  return rsjax.HardwareSpec(
      xbar_rows=16, xbar_cols=64, ou_rows=ou_rows,
      ou_cols=slices * draw(st.integers(1, 2)), cell_bits=cell_bits,
      weight_bits=weight_bits, input_bits=input_bits, dac_bits=dac_bits,
      adc_bits=draw(st.integers(1, 6)),
      adc_mode=draw(st.sampled_from(["clip", "scale", "calibrated"])),
      signed=signed)


@hypothesis.settings(max_examples=10, deadline=None, derandomize=True)
@hypothesis.given(hw=specs(), m=st.integers(1, 3), k=st.integers(1, 13),
                  n=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_matches_reference_on_random_specs(hw, m, k, n, seed):
  rng = np.random.default_rng(seed)
  x, w = _rand(rng, hw, m, k, n, zero_blocks=seed % 2 == 0)
  calibrated = int(rng.integers(1, 2 * hw.partial_sum_max + 2))
  arg = calibrated if hw.adc_mode == "calibrated" else None
  for dataflow in ("table", "streamed", "direct"):
    y = rk.crossbar_matmul(x, w, hw, adc_range=arg, dataflow=dataflow)
    _check(y, x, w, hw, calibrated)


@pytest.mark.parametrize("signed", ["offset", "differential"])
@pytest.mark.parametrize("mode", ["clip", "scale", "calibrated"])
def test_isaac_lossy_all_modes(signed, mode):
  hw = rsjax.HardwareSpec(adc_bits=4, adc_mode=mode, signed=signed,
                          weight_bits=8 if signed == "offset" else 9)
  rng = np.random.default_rng(1)
  # Dense low bits make partial sums large enough to saturate a 4-bit ADC.
  x = rng.integers(200, 256, (6, 23))
  w = rng.integers(-hw.max_weight, hw.max_weight + 1, (23, 9))
  lossless = ref.crossbar_output(x, w, hw.replace(adc_bits=5, adc_mode="clip"))
  for dataflow in ("table", "streamed", "direct"):
    y = rk.crossbar_matmul(x, w, hw, adc_range=20 if mode == "calibrated"
                           else None, dataflow=dataflow)
    _check(y, x, w, hw, 20)
  assert not np.array_equal(np.asarray(y), lossless)


@pytest.mark.parametrize("dataflow", ["auto", "sliced", "exact", "table",
                                    "streamed", "direct"])
@pytest.mark.parametrize("use_jit", [False, True])
def test_lossless_is_integer_matmul(dataflow, use_jit):
  rng = np.random.default_rng(2)
  x, w = _rand(rng, ISAAC, 2 * 3 * 5, 31, 13)
  x = x.reshape(2, 3, 5, 31)
  weights = rk.prepare(w, ISAAC, dataflow=dataflow)
  f = (jax.jit(lambda a: rk.apply(weights, a)) if use_jit
       else lambda a: rk.apply(weights, a))
  y = f(jnp.asarray(x, jnp.int32))
  assert y.shape == (2, 3, 5, 13) and y.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(y), x @ w)
  # 'sliced' is 'auto' without the integer-matmul short cut.
  want = {"auto": "exact", "sliced": "table"}.get(dataflow, dataflow)
  assert weights.dataflow == want


def test_differential_lossless_scale_is_exact():
  hw = rsjax.HardwareSpec(signed="differential", weight_bits=9,
                          adc_mode="scale", adc_bits=5)
  rng = np.random.default_rng(3)
  x, w = _rand(rng, hw, 4, 19, 6)
  for dataflow in ("exact", "table", "streamed", "direct"):
    y = rk.crossbar_matmul(x, w, hw, dataflow=dataflow)
    np.testing.assert_array_equal(np.asarray(y), (x @ w).astype(np.float32))


def _shared_layer(rng, hw, k, n, slots):
  bh, bw = hw.block_shape
  nrb, ngr = -(-k // bh), -(-n // bw)
  codebook = rng.integers(-hw.max_weight, hw.max_weight + 1,
                          (nrb, slots, bh, bw))
  index = rng.integers(-1, slots, (nrb, ngr)).astype(np.int32)
  dense = rsjax.from_ous(
      rsjax.decompress(jnp.asarray(codebook), jnp.asarray(index)), (k, n))
  return codebook, index, np.asarray(dense)


@pytest.mark.parametrize("signed", ["offset", "differential"])
@pytest.mark.parametrize("dataflow", ["exact", "table", "streamed", "direct"])
def test_shared_equals_dense_bit_exact(signed, dataflow):
  hw = rsjax.HardwareSpec(adc_bits=5 if dataflow == "exact" else 4,
                          signed=signed,
                          weight_bits=8 if signed == "offset" else 9)
  rng = np.random.default_rng(4)
  k, n = 40, 21
  codebook, index, dense = _shared_layer(rng, hw, k, n, slots=3)
  x = rng.integers(128, 256, (7, k))
  y_shared = rk.shared_crossbar_matmul(x, codebook, index, hw,
                                       out_features=n, dataflow=dataflow)
  y_dense = rk.crossbar_matmul(x, dense, hw, dataflow=dataflow)
  np.testing.assert_array_equal(np.asarray(y_shared), np.asarray(y_dense))
  _check(y_shared, x, dense, hw)


def test_spec_worked_example_index_and_add():
  # The paper's worked example (docs/compression.md): 2x2 OUs, 2 row-blocks x 4 column groups, 2 clusters.
  hw = rsjax.HardwareSpec(ou_rows=2, ou_cols=2, cell_bits=8, weight_bits=8,
                          adc_bits=12, xbar_rows=4, xbar_cols=8)
  assert hw.block_shape == (2, 2)
  codebook = np.array([[[[1, 5], [2, 4]], [[1, 1], [8, 7]]],
                       [[[7, 2], [1, 4]], [[2, 9], [5, 3]]]])
  index = np.array([[0, 1, 0, 0], [0, 0, 1, 1]], np.int32)
  z = np.block([[codebook[0, 0], codebook[0, 1], codebook[0, 0],
                 codebook[0, 0]],
                [codebook[1, 0], codebook[1, 0], codebook[1, 1],
                 codebook[1, 1]]])
  x = np.array([[3, 0, 7, 1], [1, 2, 3, 4]])
  y = rk.shared_crossbar_matmul(x, codebook, index, hw, dataflow="table")
  np.testing.assert_array_equal(np.asarray(y), x @ z)


def test_calibrated_range_clamped():
  hw = rsjax.HardwareSpec(adc_bits=4, adc_mode="calibrated")
  rng = np.random.default_rng(5)
  x, w = _rand(rng, hw, 3, 18, 4)
  lo = rk.crossbar_matmul(x, w, hw, adc_range=1)
  clip = rk.crossbar_matmul(x, w, hw.replace(adc_mode="clip"))
  np.testing.assert_array_equal(np.asarray(lo), np.asarray(clip, np.float32))
  hi = rk.crossbar_matmul(x, w, hw, adc_range=10**6)
  scale = rk.crossbar_matmul(x, w, hw.replace(adc_mode="scale"))
  np.testing.assert_array_equal(np.asarray(hi), np.asarray(scale))


def test_bad_inputs():
  rng = np.random.default_rng(6)
  x, w = _rand(rng, ISAAC, 2, 10, 3)
  with pytest.raises(ValueError, match="lie in"):
    rk.crossbar_matmul(x - 300, w, ISAAC)
  with pytest.raises(ValueError, match="lie in"):
    rk.crossbar_matmul(x + 256, w, ISAAC)
  with pytest.raises(ValueError, match="integers"):
    rk.crossbar_matmul(x.astype(np.float32), w, ISAAC)
  with pytest.raises(ValueError, match="integers"):
    rk.crossbar_matmul(x, w * 0.5, ISAAC)
  with pytest.raises(ValueError, match="lie in"):
    rk.crossbar_matmul(x, w * 200, ISAAC)
  with pytest.raises(ValueError, match=r"\[\.\.\., 10\]"):
    rk.crossbar_matmul(x[:, :9], w, ISAAC)
  with pytest.raises(ValueError, match="calibrated"):
    rk.crossbar_matmul(x, w, ISAAC.replace(adc_mode="calibrated"))
  with pytest.raises(ValueError, match="exact"):
    rk.crossbar_matmul(x, w, ISAAC_LOSSY, dataflow="exact")
  codebook, index, _ = _shared_layer(rng, ISAAC, 18, 4, 2)
  with pytest.raises(ValueError, match="row-blocks"):
    rk.shared_crossbar_matmul(np.zeros((1, 18), np.int32), codebook,
                              index[:1], ISAAC)
  with pytest.raises(ValueError, match="index"):
    rk.shared_crossbar_matmul(np.zeros((1, 18), np.int32), codebook,
                              index + 2, ISAAC)
  with pytest.raises(ValueError, match="in_features"):
    rk.shared_crossbar_matmul(np.zeros((1, 30), np.int32), codebook, index,
                              ISAAC)
  with pytest.raises(ValueError, match="overflow"):
    wide = rsjax.HardwareSpec(input_bits=16, weight_bits=16, ou_cols=16,
                              cell_bits=2, adc_bits=8)
    rk.prepare(np.zeros((20000, 2), np.int32), wide)
  with pytest.raises(ValueError, match="block_shape"):
    rk.shared_crossbar_matmul(np.zeros((1, 18), np.int32), codebook, index,
                              ISAAC.replace(ou_rows=3))


@pytest.mark.parametrize("dataflow", ["exact", "table", "streamed", "direct"])
def test_eager_without_jit(dataflow):
  hw = (ISAAC if dataflow == "exact" else
        ISAAC_LOSSY.replace(signed="differential", weight_bits=9))
  rng = np.random.default_rng(7)
  x, w = _rand(rng, hw, 3, 11, 4)
  with jax.disable_jit():
    y = rk.crossbar_matmul(x, w, hw, dataflow=dataflow)
  _check(y, x, w, hw)


@pytest.mark.parametrize("dataflow", ["exact", "table", "streamed", "direct"])
def test_signed_inputs_twos_complement(dataflow):
  rng = np.random.default_rng(8)
  lossy = dataflow != "exact"
  hw = ISAAC_LOSSY.replace(adc_mode="scale") if lossy else ISAAC
  x = rng.integers(-128, 128, (2, 3, 14))
  w = rng.integers(-127, 128, (14, 5))
  y = rk.crossbar_matmul(x, w, hw, dataflow=dataflow, signed_inputs=True)
  want = ref.crossbar_output_signed(x.reshape(-1, 14), w, hw).reshape(2, 3, 5)
  np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=1e-6,
                             atol=1e-6 * np.abs(want).max())
  if not lossy:
    np.testing.assert_array_equal(np.asarray(y), x @ w)
  lossless = rk.crossbar_matmul(x, w, ISAAC, dataflow=dataflow if lossy else
                                "exact", signed_inputs=True)
  np.testing.assert_array_equal(np.asarray(lossless), x @ w)
  with pytest.raises(ValueError, match="lie in"):
    rk.crossbar_matmul(x * 2, w, hw, signed_inputs=True)


@pytest.mark.parametrize("shared", [False, True])
def test_streamed_when_table_too_large_and_in_chunks(monkeypatch, shared):
  # A table over TABLE_MAX_BYTES is built per row-block in each call; many
  # small chunks (each building all tables again) give the same numbers.
  hw = ISAAC_LOSSY.replace(signed="differential", weight_bits=9)
  rng = np.random.default_rng(9)
  k, n = 40, 21
  codebook, index, dense = _shared_layer(rng, hw, k, n, slots=3)
  x = rng.integers(0, 256, (50, k))

  def prepare(dataflow):
    if shared:
      return rk.prepare_shared(codebook, index, hw, out_features=n,
                               in_features=k, dataflow=dataflow)
    return rk.prepare(dense, hw, dataflow=dataflow)

  want = np.asarray(rk.apply(prepare("table"), x))
  monkeypatch.setattr(rk.crossbar, "TABLE_MAX_BYTES", 1024)
  weights = prepare("sliced")
  assert weights.dataflow == "streamed" and weights.table is None
  np.testing.assert_array_equal(np.asarray(rk.apply(weights, x)), want)
  monkeypatch.setattr(rk.dataflow, "_STREAM_CHUNK_BYTES", 1)
  assert rk.dataflow.chunk_rows(hw, "streamed", 5, n) == 8
  got = jax.jit(lambda a: rk.apply(weights, a))(jnp.asarray(x, jnp.int32))
  np.testing.assert_array_equal(np.asarray(got), want)
  _check(got, x, dense, hw)


@pytest.mark.parametrize("signed", ["offset", "differential"])
def test_direct_dense_row_block_major_equals_direct(signed):
  # 16-row OUs (2^16 patterns: no table): a dense layer without read noise
  # runs the direct path row-block by row-block; the same numbers as the
  # chunk-major direct path (which shared layers and read noise use), with
  # programming faults and zero blocks.
  hw = rsjax.HardwareSpec(ou_rows=16, adc_bits=4, signed=signed,
                          weight_bits=8 if signed == "offset" else 9)
  rng = np.random.default_rng(10)
  x, w = _rand(rng, hw, 21, 45, 11, zero_blocks=True)
  weights = rk.prepare(w, hw,
                       device=rk.Device(programming=rk.Programming(0.05)),
                       key=jax.random.key(1))
  assert weights.dataflow == "direct" and rk.crossbar._dense_direct(weights)
  pad = weights.num_row_blocks * hw.ou_rows - x.shape[1]
  xp = jnp.pad(jnp.asarray(x, jnp.int32), ((0, 0), (0, pad)))
  args = (weights.cells, weights.active, xp, hw, weights.adc_range)
  want = rk.dataflow.direct_apply(weights.cells, None, weights.active, xp,
                                  hw, weights.adc_range, 0.0, None)
  for fn in (rk.dataflow.direct_dense_apply,
             jax.jit(rk.dataflow.direct_dense_apply, static_argnums=3)):
    np.testing.assert_array_equal(np.asarray(fn(*args)), np.asarray(want))
  ideal = rk.crossbar_matmul(x, w, hw)
  _check(ideal, x, w, hw)


@pytest.mark.parametrize("signed", ["offset", "differential"])
def test_one_cell_per_weight(signed):
  # 4-bit weights on 4-bit cells (differential: 3-bit magnitudes, the top
  # level unused): one slice per weight, p_max = 9 * 15. (The emulator's
  # entry points are jitted inside.)
  hw = rsjax.HardwareSpec(signed=signed, weight_bits=4, cell_bits=4,
                          ou_cols=4, input_bits=4, adc_bits=8)
  assert hw.slices == 1 and hw.adc_lossless
  rng = np.random.default_rng(7)
  x, w = _rand(rng, hw, 5, 23, 11, zero_blocks=True)
  x_hi = rng.integers(12, 16, (5, 23))  # large partial sums: saturates
  for dataflow, mode in (("exact", None), ("table", "clip"),
                         ("streamed", "scale"), ("direct", "clip")):
    y = rk.crossbar_matmul(x, w, hw, dataflow=dataflow)
    np.testing.assert_array_equal(np.asarray(y), x @ w)
    if mode is None:
      continue
    lossy = hw.replace(adc_bits=5, adc_mode=mode)
    assert not lossy.adc_lossless
    y = rk.crossbar_matmul(x_hi, w, lossy, dataflow=dataflow)
    _check(y, x_hi, w, lossy)
    assert not np.allclose(np.asarray(y, np.float64), x_hi @ w)


@pytest.mark.parametrize("dataflow", ["table", "streamed", "direct", "sliced"])
def test_runs_with_64bit_types_enabled(dataflow):
  # A user with jax_enable_x64 on: integer sums must not widen to int64
  # (scan carries and int32 dots refused them before).
  rng = np.random.default_rng(4)
  x = rng.integers(0, 256, (6, 40))
  w = rng.integers(-127, 128, (40, 16))
  hw = rsjax.HardwareSpec(adc_bits=4)
  want = np.asarray(rk.crossbar_matmul(x, w, hw, dataflow=dataflow))
  with jax.enable_x64(True):
    got = rk.crossbar_matmul(x, w, hw, dataflow=dataflow)
    signed = rk.crossbar_matmul(x - 128, w, hw, signed_inputs=True,
                                dataflow=dataflow)
  assert got.dtype == jnp.int32 and signed.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(got), want)
