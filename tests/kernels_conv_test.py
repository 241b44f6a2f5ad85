"""im2col convolution on crossbars against jax.lax.conv_general_dilated."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rsjax
from rsjax import kernels as rk

import kernels_reference as ref

HW = rsjax.HardwareSpec()  # 5-bit ADC: lossless for 9-row OUs


def _lax_conv(x, kernel, strides, padding, dilation=(1, 1)):
  return jax.lax.conv_general_dilated(
      jnp.asarray(x, jnp.float32), jnp.asarray(kernel, jnp.float32),
      strides, padding, rhs_dilation=dilation,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize("strides,padding,dilation", [
    ((1, 1), "SAME", (1, 1)),
    ((2, 2), "SAME", (1, 1)),
    ((2, 1), "VALID", (1, 1)),
    ((1, 1), [(2, 0), (1, 1)], (2, 1)),
])
@pytest.mark.parametrize("dataflow", ["exact", "table"])
def test_lossless_conv_equals_lax(strides, padding, dilation, dataflow):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 16, (2, 7, 6, 3))
  kernel = rng.integers(-127, 128, (3, 3, 3, 5))
  y = rk.crossbar_conv(x, kernel, HW, strides, padding, dilation,
                       dataflow=dataflow)
  want = _lax_conv(x, kernel, strides, padding, dilation)
  assert y.shape == want.shape
  np.testing.assert_array_equal(np.asarray(y), np.asarray(want, np.int64))


def test_im2col_order_matches_lowering():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((1, 5, 5, 4)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 2, 4, 6)), jnp.float32)
  patches = rk.im2col(x, (3, 2), 1, "VALID")
  y = jnp.einsum("bhwk,kn->bhwn", patches, rsjax.to_crossbar_matrix(kernel),
                 precision=jax.lax.Precision.HIGHEST)
  np.testing.assert_allclose(np.asarray(y),
                             np.asarray(_lax_conv(x, kernel, (1, 1), "VALID")),
                             rtol=1e-5, atol=1e-5)


def test_lossy_conv_matches_reference_on_patches():
  hw = HW.replace(adc_bits=4)
  rng = np.random.default_rng(2)
  x = rng.integers(128, 256, (1, 4, 4, 2))
  kernel = rng.integers(-127, 128, (3, 3, 2, 4))
  y = rk.crossbar_conv(x, kernel, hw, 1, "SAME")
  patches = np.asarray(rk.im2col(jnp.asarray(x), 3, 1, "SAME"))
  want = ref.crossbar_output(patches.reshape(-1, 18), kernel.reshape(18, 4),
                             hw)
  np.testing.assert_array_equal(np.asarray(y).reshape(-1, 4), want)


def test_conv_bad_inputs():
  x = np.zeros((1, 4, 4, 2), np.int32)
  with pytest.raises(ValueError, match="kernel"):
    rk.crossbar_conv(x, np.zeros((3, 3, 2), np.int32), HW)
  with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
    rk.crossbar_conv(x, np.zeros((3, 3, 3, 1), np.int32), HW)
  with pytest.raises(ValueError, match="padding"):
    rk.im2col(x, 3, 1, "FULL")


def test_signed_input_conv_equals_lax():
  rng = np.random.default_rng(3)
  x = rng.integers(-128, 128, (1, 5, 5, 3))
  kernel = rng.integers(-127, 128, (3, 3, 3, 2))
  y = rk.crossbar_conv(x, kernel, HW, 1, "SAME", dataflow="table",
                       signed_inputs=True)
  want = _lax_conv(x, kernel, (1, 1), "SAME")
  np.testing.assert_array_equal(np.asarray(y), np.asarray(want, np.int64))
