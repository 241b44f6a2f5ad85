"""Crossbar lowering and OU tiling."""

import hypothesis
from hypothesis import strategies as st
import jax.numpy as jnp
import numpy as np
import pytest

import rsjax


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(rows=st.integers(1, 30), cols=st.integers(1, 30),
                  bh=st.integers(1, 10), bw=st.integers(1, 5),
                  use_jax=st.booleans())
def test_to_ous_from_ous_round_trip(rows, cols, bh, bw, use_jax):
  m = np.arange(1, rows * cols + 1, dtype=np.float32).reshape(rows, cols)
  ous = rsjax.to_ous(jnp.asarray(m) if use_jax else m, (bh, bw))
  r, g = -(-rows // bh), -(-cols // bw)
  assert ous.shape == (r, g, bh, bw)
  assert rsjax.grid_shape((rows, cols), (bh, bw)) == (r, g)
  # Padding is zero and every weight sits in its block.
  assert float(np.asarray(ous).sum()) == float(m.sum())
  i, j = rows - 1, cols - 1
  assert ous[i // bh, j // bw, i % bh, j % bw] == m[i, j]
  np.testing.assert_array_equal(rsjax.from_ous(ous, (rows, cols)), m)


def test_conv_row_order_is_kh_kw_cin():
  kernel = np.random.default_rng(0).normal(size=(3, 2, 4, 5))
  m = rsjax.to_crossbar_matrix(kernel)
  assert m.shape == (24, 5)
  for i, j, c in np.ndindex(3, 2, 4):
    np.testing.assert_array_equal(m[(i * 2 + j) * 4 + c], kernel[i, j, c])
  np.testing.assert_array_equal(
      rsjax.from_crossbar_matrix(m, kernel.shape), kernel)
  dense = jnp.ones((7, 3))
  assert rsjax.to_crossbar_matrix(dense) is not None
  np.testing.assert_array_equal(rsjax.to_crossbar_matrix(dense), dense)


def test_bad_shapes():
  with pytest.raises(ValueError, match="3-D"):
    rsjax.to_crossbar_matrix(np.ones((2, 3, 4)))
  with pytest.raises(ValueError, match="block_shape"):
    rsjax.to_ous(np.ones((4, 4)), (0, 2))
  with pytest.raises(ValueError, match="block_shape"):
    rsjax.to_ous(np.ones((4, 4)), (2,))
  with pytest.raises(ValueError, match="2-D"):
    rsjax.to_ous(np.ones((3, 3, 3, 3)), (2, 2))
  with pytest.raises(ValueError, match="does not tile"):
    rsjax.from_ous(np.ones((2, 2, 2, 2)), (5, 4))
  with pytest.raises(ValueError, match="cannot be a kernel"):
    rsjax.from_crossbar_matrix(np.ones((10, 3)), (3, 3, 1, 3))
