"""Symmetric weight quantization against NumPy."""

import jax
import numpy as np
import pytest

import rsjax


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("per", ["layer", "column"])
def test_against_numpy(per, jit):
  w = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
  w[:, 2] = 0  # an all-zero column keeps scale 1
  fn = lambda a: rsjax.quantize_weights(a, 4, per=per)
  q, scale = (jax.jit(fn) if jit else fn)(w)
  amax = np.abs(w).max() if per == "layer" else np.abs(w).max(0)
  ref_scale = np.where(amax > 0, amax / 7, 1).astype(np.float32)
  np.testing.assert_allclose(scale, ref_scale, rtol=1e-6)
  np.testing.assert_array_equal(q, np.clip(np.round(w / ref_scale), -7, 7))
  assert q.dtype == np.int32 and np.abs(np.asarray(q)).max() <= 7
  assert np.abs(np.asarray(rsjax.dequantize(q, scale)) - w).max() <= (
      np.max(ref_scale) / 2 + 1e-6)


def test_bad_bits():
  with pytest.raises(ValueError, match="bits"):
    rsjax.quantize_weights(np.ones(3), 1)
  with pytest.raises(ValueError, match="per"):
    rsjax.quantize_weights(np.ones(3), 8, per="row")
