"""The saturation-aware backward against a NumPy loop over every partial sum."""

import itertools

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rsjax
from rsjax import kernels as rk
from rsjax.kernels import saturation


def _reference(x, w, x_int, w_int, g, hw, top):
  """d/dx, d/dw of sum(g * (x @ w)) keeping unsaturated terms (loops)."""
  batch, in_features = x_int.shape
  out = w_int.shape[1]
  dac, cell = 2**hw.dac_bits - 1, 2**hw.cell_bits - 1
  if hw.signed == "offset":
    off = 2 ** (hw.weight_bits - 1)
    arrays = [(w_int + off, w + off, 1.0, np.ones(w.shape))]
  else:
    at_zero = np.where(w_int == 0, 0.5, 0.0)
    arrays = [(np.maximum(w_int, 0), np.maximum(w, 0), 1.0,
               (w_int > 0) + at_zero),
              (np.maximum(-w_int, 0), np.maximum(-w, 0), -1.0,
               -((w_int < 0) + at_zero))]
  d_x = np.zeros(x_int.shape)
  d_w = np.zeros(w_int.shape)
  for v_int, v, sign, dv_dw in arrays:
    x_dig = [(x_int >> (hw.dac_bits * c)) & dac for c in range(hw.cycles)]
    v_dig = [(v_int >> (hw.cell_bits * s)) & cell for s in range(hw.slices)]
    d_v = np.zeros(v.shape)
    for b, n, c, s in itertools.product(range(batch), range(out),
                                        range(hw.cycles), range(hw.slices)):
      for r0 in range(0, in_features, hw.ou_rows):
        rows = range(r0, min(r0 + hw.ou_rows, in_features))
        p = sum(x_dig[c][b, r] * v_dig[s][r, n] for r in rows)
        if p > top:
          continue
        for r in rows:
          # The share of x in cycle c and of v in slice s (of the integer
          # digits' values; even where the integer is 0).
          xs = (2.0 ** (hw.dac_bits * c) * x_dig[c][b, r] / x_int[b, r]
                if x_int[b, r] else 1 / hw.cycles)
          vs = (2.0 ** (hw.cell_bits * s) * v_dig[s][r, n] / v_int[r, n]
                if v_int[r, n] else 1 / hw.slices)
          d_x[b, r] += sign * g[b, n] * xs * vs * v[r, n]
          d_v[r, n] += g[b, n] * vs * xs * x[b, r]
    d_w += sign * d_v * dv_dw
  if hw.signed == "offset":
    d_x -= 2.0 ** (hw.weight_bits - 1) * g.sum(axis=1, keepdims=True)
  return d_x, d_w


def _grads(x, w, x_int, w_int, g, hw, adc_range, jit):
  def f(x, w):
    y = rk.saturating_matmul(x, w, x_int, w_int, hw, adc_range)
    return jnp.sum(y * g)
  fn = jax.grad(f, argnums=(0, 1))
  if jit:
    fn = jax.jit(fn)
  return fn(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32))


def _case(seed, batch, in_features, out, hw, x_high):
  """Integer inputs and weights and the floats they were rounded from."""
  rng = np.random.default_rng(seed)
  x_int = rng.integers(0, x_high, (batch, in_features)).astype(np.int32)
  w_int = rng.integers(-hw.max_weight, hw.max_weight + 1,
                       (in_features, out)).astype(np.int32)
  x = np.maximum(x_int + rng.uniform(-0.5, 0.5, x_int.shape), 0.0)
  w = w_int + rng.uniform(-0.5, 0.5, w_int.shape)
  g = rng.normal(size=(batch, out))
  return (x.astype(np.float32), w.astype(np.float32), x_int, w_int,
          g.astype(np.float32))


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("signed,adc_mode", [
    ("offset", "clip"), ("differential", "clip"), ("offset", "calibrated")])
def test_matches_the_loop_reference(jit, signed, adc_mode):
  hw = rsjax.HardwareSpec(ou_rows=4, ou_cols=4, cell_bits=2, weight_bits=4,
                          input_bits=4, adc_bits=2, adc_mode=adc_mode,
                          signed=signed)
  x, w, x_int, w_int, g = _case(0, 3, 10, 2, hw, 16)
  adc_range = jnp.int32(5) if adc_mode == "calibrated" else None
  top = 5 if adc_mode == "calibrated" else hw.adc_max
  want = _reference(x, w, x_int, w_int, g, hw, top)
  got = _grads(x, w, x_int, w_int, g, hw, adc_range, jit)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-4)
  # Some terms saturated: not the plain straight-through gradient.
  assert not np.allclose(got[1], x.T @ g, atol=1e-3)


def test_rows_in_chunks_match_the_loop_reference(monkeypatch):
  # Chunks of 8 rows (the least): 11 rows are two chunks, one padded.
  monkeypatch.setattr(saturation, "_CHUNK_BYTES", 1)
  hw = rsjax.HardwareSpec(ou_rows=4, ou_cols=4, cell_bits=2, weight_bits=4,
                          input_bits=4, adc_bits=2)
  x, w, x_int, w_int, g = _case(5, 11, 10, 2, hw, 16)
  want = _reference(x, w, x_int, w_int, g, hw, hw.adc_max)
  got = _grads(x, w, x_int, w_int, g, hw, None, jit=True)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-4)


@hypothesis.settings(deadline=None, max_examples=8)
@hypothesis.given(batch=st.integers(1, 4), in_features=st.integers(1, 13),
                  out=st.integers(1, 3), ou_rows=st.sampled_from([2, 3, 9]),
                  signed=st.sampled_from(["offset", "differential"]),
                  seed=st.integers(0, 2**16))
def test_lossless_adc_gives_the_straight_through_gradient(
    batch, in_features, out, ou_rows, signed, seed):
  # No partial sum saturates: exactly d(x @ w) = (g w^T, x^T g).
  hw = rsjax.HardwareSpec(ou_rows=ou_rows, ou_cols=4, cell_bits=2,
                          weight_bits=4, input_bits=4, adc_bits=5,
                          signed=signed)
  assert hw.adc_lossless
  x, w, x_int, w_int, g = _case(seed, batch, in_features, out, hw, 16)
  d_x, d_w = _grads(x, w, x_int, w_int, g, hw, None, jit=True)
  np.testing.assert_allclose(d_x, g @ w.T, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(d_w, x.T @ g, rtol=1e-5, atol=1e-4)


def test_forward_is_the_float_product():
  hw = rsjax.HardwareSpec(adc_bits=3)
  x, w, x_int, w_int, _ = _case(1, 5, 20, 4, hw, 256)
  y = rk.saturating_matmul(x, w, x_int, w_int, hw)
  np.testing.assert_allclose(y, x @ w, rtol=1e-5)


def test_fully_saturated_blocks_pass_no_weight_gradient():
  # Every input at its top value and every stored value at its top: every
  # partial sum of a 1-bit ADC saturates, so no weight moves anything.
  hw = rsjax.HardwareSpec(ou_rows=9, ou_cols=8, adc_bits=1)
  x_int = np.full((2, 18), 255, np.int32)
  w_int = np.full((18, 3), hw.max_weight, np.int32)
  g = np.ones((2, 3), np.float32)
  d_x, d_w = _grads(x_int.astype(np.float32), w_int.astype(np.float32),
                    x_int, w_int, g, hw, None, jit=True)
  np.testing.assert_array_equal(d_w, 0.0)
  # Only the exact digital offset term reaches the inputs.
  np.testing.assert_allclose(d_x, -128.0 * 3)
